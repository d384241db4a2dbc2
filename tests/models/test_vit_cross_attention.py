"""M-MoCo class-attention head on a pack == a plain per-sequence loop (float64), values and grads."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _vit_ref import tiny_timm

from fastssl.models import ChunkedView, ClassAttentionHead, ImageView, MaskedView, PackedViT, split_per_view


def _ln(x, mod):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def _lin(x, mod):
    return x @ mod.weight.T + mod.bias


def _reference(head, hidden, seqlens):
    """Loop over sequences; per sequence loop over blocks and heads, written out."""
    outs, start = [], 0
    for n in seqlens:
        seq = hidden[start:start + n]
        cls = seq[0]
        for blk in head.blocks:
            u = _ln(torch.cat([cls[None], seq[1:]]), blk.norm1)
            a = blk.attn
            q, k, v = _lin(u[0], a.q), _lin(u, a.k), _lin(u, a.v)
            dh = a.head_dim
            heads = []
            for h in range(a.num_heads):
                s = k[:, h * dh:(h + 1) * dh] @ q[h * dh:(h + 1) * dh] / math.sqrt(dh)
                heads.append(torch.softmax(s, 0) @ v[:, h * dh:(h + 1) * dh])
            cls = cls + _lin(torch.cat(heads), a.proj)
            cls = cls + _lin(F.gelu(_lin(_ln(cls, blk.norm2), blk.mlp.fc1)), blk.mlp.fc2)
        outs.append(_ln(cls, head.norm))
        start += n
    return torch.stack(outs)


@pytest.mark.parametrize("backend", ["sdpa_mask", "sdpa_grouped"])
def test_class_attention_head_matches_loop(backend):
    vit = PackedViT.from_timm(tiny_timm(depth=1)).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ids = torch.stack([torch.randperm(64)[:11] for _ in range(2)])
    enc = vit.encode([ChunkedView(x, n_chunks=3), ImageView(x[:, :, :16, :20]), MaskedView(x, ids)])
    hidden = enc.hidden.detach().requires_grad_()
    head = ClassAttentionHead(48, 3, depth=2, attn_backend=backend).double()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    out = head(hidden, enc.pack)
    assert out.shape == (enc.pack.num_seqs, 48)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [hidden, *head.parameters()], g, retain_graph=True)
    ref = _reference(head, hidden, enc.pack.seqlens)
    rgrads = torch.autograd.grad(ref, [hidden, *head.parameters()], g)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    for a, b in zip(grads, rgrads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    per_view = split_per_view(out, enc.pack)
    assert [tuple(t.shape) for t in per_view] == [(3, 2, 48), (2, 48), (2, 48)]
    # the patch tokens of a chunk influence only that chunk's CLS
    (gh,) = torch.autograd.grad(out[0].sum(), hidden)
    n0 = enc.pack.seqlens[0]
    assert gh[:n0].abs().sum() > 0 and gh[n0:].abs().sum() == 0


def test_class_attention_needs_cls():
    vit = PackedViT(img_size=32, patch_size=4, embed_dim=48, depth=1, num_heads=3)
    enc = vit.encode([ImageView(torch.randn(2, 3, 32, 32), cls=False)])
    with pytest.raises(ValueError, match="CLS"):
        ClassAttentionHead(48, 3)(enc.hidden, enc.pack)
