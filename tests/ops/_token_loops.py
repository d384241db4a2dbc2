"""Plain float64 loop references for the MAE token and patchify ops (tests only).

Written independently of ``fastssl.ops.reference``: explicit loops over indices, or MAE's own
formulation (``models_mae.py``: add pos then gather; append mask tokens then unshuffle with
ids_restore; einsum patchify; norm_pix_loss), never the code under test.
"""
from __future__ import annotations

import torch


def gather_loop(x, ids, pos=None):
    """out[b, k] = x[b, ids[b, k]] + pos[ids[b, k]] in float64."""
    b_, k_ = ids.shape
    out = torch.zeros(b_, k_, x.shape[2], dtype=torch.float64)
    for b in range(b_):
        for k in range(k_):
            l = int(ids[b, k])
            out[b, k] = x[b, l].double() + (pos[l].double() if pos is not None else 0.0)
    return out


def gather_grads_loop(g, ids, num_patches):
    """Gradients of sum(g · gather): dx [B, L, D] and dpos [L, D] in float64."""
    b_, k_, d = g.shape
    dx = torch.zeros(b_, num_patches, d, dtype=torch.float64)
    dpos = torch.zeros(num_patches, d, dtype=torch.float64)
    for b in range(b_):
        for k in range(k_):
            l = int(ids[b, k])
            dx[b, l] += g[b, k].double()
            dpos[l] += g[b, k].double()
    return dx, dpos


def scatter_loop(x, ids, num_patches, mask_token, pos=None):
    """out[b, l] = (x[b, k] if ids[b, k] == l else mask_token) + pos[l] in float64."""
    b_, k_, d = x.shape
    out = torch.zeros(b_, num_patches, d, dtype=torch.float64)
    for b in range(b_):
        where = {int(ids[b, k]): k for k in range(k_)}
        for l in range(num_patches):
            tok = x[b, where[l]].double() if l in where else mask_token.reshape(-1).double()
            out[b, l] = tok + (pos[l].double() if pos is not None else 0.0)
    return out


def scatter_grads_loop(g, ids):
    """Gradients of sum(g · scatter): dx [B, K, D], d mask_token [D], dpos [L, D] in float64."""
    b_, l_, d = g.shape
    k_ = ids.shape[1]
    dx = torch.zeros(b_, k_, d, dtype=torch.float64)
    dmt = torch.zeros(d, dtype=torch.float64)
    dpos = torch.zeros(l_, d, dtype=torch.float64)
    for b in range(b_):
        kept = {int(ids[b, k]): k for k in range(k_)}
        for l in range(l_):
            dpos[l] += g[b, l].double()
            if l in kept:
                dx[b, kept[l]] += g[b, l].double()
            else:
                dmt += g[b, l].double()
    return dx, dmt, dpos


def mae_encoder_tokens(x, ids_keep, pos):
    """MAE forward_encoder: x + pos_embed, then gather the kept ones (float64)."""
    x = x.double() + pos.double().unsqueeze(0)
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, x.shape[2]))


def mae_decoder_tokens(x, ids_restore, mask_token, pos):
    """MAE forward_decoder: append mask tokens, unshuffle with ids_restore, add pos (float64)."""
    b, k, d = x.shape
    l = ids_restore.shape[1]
    mask_tokens = mask_token.double().reshape(1, 1, d).repeat(b, l - k, 1)
    x_ = torch.cat([x.double(), mask_tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, d))
    return x_ + pos.double().unsqueeze(0)


def patchify_loop(imgs, p):
    """out[b, i·w + j, (u·p + v)·C + c] = imgs[b, c, i·p + u, j·p + v], explicit loops."""
    b_, c_, h_, w_ = imgs.shape
    gh, gw = h_ // p, w_ // p
    out = torch.zeros(b_, gh * gw, p * p * c_, dtype=imgs.dtype)
    for b in range(b_):
        for i in range(gh):
            for j in range(gw):
                for u in range(p):
                    for v in range(p):
                        for c in range(c_):
                            out[b, i * gw + j, (u * p + v) * c_ + c] = imgs[b, c, i * p + u, j * p + v]
    return out


def mae_patchify(imgs, p):
    """MAE models_mae.py patchify (square patches, any H, W multiple of p)."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def mae_norm_pix(target):
    """MAE forward_loss with norm_pix_loss, float64: per patch (t − mean) / (var + 1e-6)**.5."""
    target = target.double()
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + 1.0e-6) ** 0.5
