"""Reference (eager PyTorch) implementations of fastssl's ops, written for clarity.

They back the ops on CPU tensors (``backend="auto"``) and on any device with
``backend="reference"``; the Triton kernels in ``fastssl.kernels`` must match them.
"""
from __future__ import annotations

import torch

from fastssl.ops.host_copy import to_device


def contrastive_rows(
    rows: torch.Tensor,
    cols: torch.Tensor,
    pos_idx: torch.Tensor,
    excl_idx: torch.Tensor,
    temperature: float,
    pos_weight: torch.Tensor | None = None,
    exclude_pos: bool = False,
) -> torch.Tensor:
    """Per-row contrastive loss, the core every contrastive op reduces to.

    rows [M, D] and cols [C, D] are unit vectors; s[a, c] = <rows[a], cols[c]> / temperature.
        loss[a] = -w[a] * s[a, pos[a]] + logsumexp_{c in allowed(a)} s[a, c]
    allowed(a) = every column except excl_idx[a] (skipped where it is -1) and, when
    ``exclude_pos`` (DCL's decoupling), except pos_idx[a] as well. w = pos_weight or 1.

    Args:
        pos_idx, excl_idx: int64 [M]. pos_weight: [M] or None (treated as a constant).
    Returns:
        fp32 [M]. The matmul runs in the inputs' dtype, the softmax in fp32.
    """
    logits = (rows @ cols.t()).float() / temperature  # [M, C]
    arange = torch.arange(rows.shape[0], device=rows.device)
    positive = logits[arange, pos_idx]
    drop = torch.zeros_like(logits, dtype=torch.bool)
    # Integer indices only: selecting the rows that have an exclusion by a boolean mask is a nonzero,
    # which makes the host wait for the device (this path is what "auto" runs on CUDA below the size
    # rule, i.e. every trainer step at B = 256 per GPU). Rows without one write False into column 0.
    drop[arange, excl_idx.clamp(min=0)] = excl_idx >= 0
    if exclude_pos:
        drop[arange, pos_idx] = True
    masked = logits.masked_fill(drop, float("-inf"))
    lse = torch.logsumexp(masked, dim=1)
    if pos_weight is not None:
        positive = pos_weight.detach().float() * positive
    return lse - positive


def dclw_weights(views: torch.Tensor, sigma: float) -> torch.Tensor:
    """DCLW's positive weights (DCL eq. 6): w_i = 2 − N·softmax_i(<z_i¹, z_i²>/σ) over the global batch,
    so E[w] = 1. ``views`` [ranks, 2, n, D]: the unit views of every rank (sample g = r·n + i), no
    gradient. Returns fp32 [N = ranks·n]."""
    with torch.no_grad():
        cos = (views[:, 0].float() * views[:, 1].float()).sum(dim=-1).reshape(-1)
        return 2.0 - cos.shape[0] * torch.softmax(cos / sigma, dim=0)



def queue_rows(
    rows: torch.Tensor,
    keys: torch.Tensor,
    pos_idx: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Per-row MoCo v2 InfoNCE against a queue of negatives, the core of ``info_nce(..., queue=...)``.

    rows [M, D], keys [N, D] and queue [K, D] are unit vectors; row a's positive is keys[pos_idx[a]]
    and its negatives are the K queue keys (the batch's other keys are not negatives: MoCo v2's
    official code builds the logits as [l_pos, q·queueᵀ] with label 0):
        loss[a] = -s_pos[a] + log(exp(s_pos[a]) + Σ_c exp(<rows[a], queue[c]>/τ)),
        s_pos[a] = <rows[a], keys[pos_idx[a]]> / τ
    Materialises the [M, 1+K] logits (the kernel does not). The positive dot runs in fp32, the
    queue matmul in the inputs' dtype, the softmax in fp32. No gradient flows into the queue.
    Returns fp32 [M].
    """
    l_pos = (rows.float() * keys.float()[pos_idx]).sum(dim=1, keepdim=True)  # [M, 1]
    l_neg = (rows @ queue.detach().to(rows.dtype).t()).float()  # [M, K]
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


# --------------------------------------------------------------------------------------------------
# MAE token ops: references for kernels/tokens.py and kernels/patchify.py.
# Conventions (MAE's models_mae.py): mask 0 = keep, 1 = removed; a patch vector is ordered
# (p, q, c) as MAE's patchify (einsum 'nchpwq->nhwpqc'); positional embeddings are [L, D], patch
# positions only (the CLS slot is the caller's business).
# --------------------------------------------------------------------------------------------------


def gather_tokens(x: torch.Tensor, ids_keep: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
    """Kept tokens plus their positional embeddings, as MAE's ``forward_encoder`` computes them.

    x [B, L, D], ids_keep int [B, K], pos_embed [L, D] or None -> [B, K, D]:
        out[b, k] = x[b, ids_keep[b, k]] + pos_embed[ids_keep[b, k]]
    MAE adds the embedding to all L tokens and then gathers; the result (and its autograd) is the
    same, only the traffic differs. Output dtype follows torch's promotion of x and pos_embed.
    """
    if pos_embed is not None:
        x = x + pos_embed.unsqueeze(0)
    return torch.gather(x, 1, ids_keep.long().unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_tokens(
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    num_patches: int,
    mask_token: torch.Tensor,
    pos_embed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kept tokens back at their positions, the mask token elsewhere, plus positional embeddings.

    x [B, K, D], ids_keep int [B, K], mask_token [D] (any shape with D elements), pos_embed [L, D]
    or None -> [B, L, D] with L = num_patches:
        out[b, l] = (x[b, k] if ids_keep[b, k] == l else mask_token) + pos_embed[l]
    Same values as MAE's ``forward_decoder`` (append mask tokens, unshuffle with ids_restore, add
    the embedding); written with a scatter because the op takes ids_keep.
    """
    b, k, d = x.shape
    dtype = torch.promote_types(x.dtype, mask_token.dtype)
    if pos_embed is not None:
        dtype = torch.promote_types(dtype, pos_embed.dtype)
    base = mask_token.reshape(1, 1, d).to(dtype).expand(b, num_patches, d)
    out = base.scatter(1, ids_keep.long().unsqueeze(-1).expand(-1, -1, d), x.to(dtype))
    if pos_embed is not None:
        out = out + pos_embed.unsqueeze(0)
    return out


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """MAE's patchify: [B, C, H, W] -> [B, L, p·p·C], L = (H/p)·(W/p) row-major over the patch grid.

    out[b, i·w + j, (u·p + v)·C + c] = imgs[b, c, i·p + u, j·p + v] (einsum 'nchpwq->nhwpqc').
    """
    b, c, h, w = imgs.shape
    p = patch_size
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's norm_pix_loss target: per patch (last dim), (t − mean) / sqrt(unbiased var + eps)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def patchify_noise(
    imgs: torch.Tensor,
    patch_size: int,
    sigma: torch.Tensor,
    ids_keep: torch.Tensor | None = None,
    norm_target: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CAN's noisy encoder input and MAE's target in eager torch: (inputs, target, noise).

    imgs [B, C, H, W], sigma fp32 [B], ids_keep [B, K] or None. patches = patchify(imgs);
    kept = patches[b, ids_keep[b]] (all patches without ids_keep); noise = σ_b·ε, ε ~ N(0, I) drawn
    in fp32 from ``generator`` (torch's RNG, not the kernel's Philox stream);
    inputs = kept + noise; target = patches, normalised per patch when ``norm_target``.
    The noise arithmetic is fp32; outputs are stored in imgs.dtype.
    """
    patches = patchify(imgs, patch_size)
    kept = patches if ids_keep is None else torch.gather(patches, 1, ids_keep.long().unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    gen_device = generator.device if generator is not None else imgs.device
    eps = to_device(torch.randn(kept.shape, generator=generator, device=gen_device, dtype=torch.float32), imgs.device)
    noise = sigma.float().reshape(-1, 1, 1) * eps
    inputs = (kept.float() + noise).to(imgs.dtype)
    target = normalize_patches(patches.float()).to(imgs.dtype) if norm_target else patches
    return inputs, target, noise.to(imgs.dtype)


# --------------------------------------------------------------------------------------------------
# MAE's masked-patch loss (models_mae.py ``forward_loss``), written as MAE writes it.
# --------------------------------------------------------------------------------------------------


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """pred, target [B, L, P], mask [B, L] (1 = masked) -> scalar: Σ mask·mean_P((pred − t)²) / Σ mask,
    t = target normalised per patch (mean, unbiased var, eps 1e-6) when ``norm_pix``. fp32 or wider."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    t = normalize_patches(target.to(dtype)) if norm_pix else target.to(dtype)
    loss = ((pred.to(dtype) - t) ** 2).mean(dim=-1)
    m = mask.to(dtype)
    return (loss * m).sum() / m.sum()
