"""Independent references for the packed ViT tests: timm's own modules run on one sequence at a
time, and attention written as a plain loop. Nothing here imports fastssl.models."""
from __future__ import annotations

import math

import fastssl  # noqa: F401  (torchvision shim before timm)
import timm
import torch
from timm.layers import resample_abs_pos_embed


def tiny_timm(depth: int = 3, dim: int = 48, heads: int = 3, img: int = 32, patch: int = 4, **kw) -> torch.nn.Module:
    """A timm VisionTransformer, no head, randomly initialised (non-trivial CLS and pos)."""
    m = timm.create_model("vit_tiny_patch16_224", img_size=img, patch_size=patch, num_classes=0, depth=depth,
                          embed_dim=dim, num_heads=heads, **kw)
    with torch.no_grad():  # timm initialises the CLS at std 1e-6; make it matter in the tests
        m.cls_token.normal_(std=0.5)
        m.pos_embed.normal_(std=0.5)
        for name, p in m.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


def timm_pos_for_grid(t: torch.nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """``[h*w, D]`` patch positional embeddings for a grid, via timm's own resampling."""
    g = t.patch_embed.grid_size
    pe = resample_abs_pos_embed(t.pos_embed, new_size=list(grid), old_size=list(g), num_prefix_tokens=1)
    return pe[0, 1:]


def timm_patch_tokens(t: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``[B, h*w, D]`` patch embeddings (timm's Conv2d) + positional embeddings for the image's grid."""
    p = t.patch_embed.patch_size[0]
    x = t.patch_embed.proj(images).flatten(2).transpose(1, 2)
    grid = (images.shape[2] // p, images.shape[3] // p)
    return x + timm_pos_for_grid(t, grid)


def timm_cls(t: torch.nn.Module) -> torch.Tensor:
    return (t.cls_token + t.pos_embed[:, :1])[0, 0]


def timm_sequence(t: torch.nn.Module, tokens: torch.Tensor, taps: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run one sequence ``[L, D]`` alone through timm's blocks and final norm (as a batch of one)."""
    x = tokens.unsqueeze(0)
    out = {}
    for i, blk in enumerate(t.blocks):
        x = blk(x)
        if i in taps:
            out[i] = x[0]
    return t.norm(x)[0], out


def loop_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_lens, k_lens) -> torch.Tensor:
    """Block-diagonal attention, one sequence and one head at a time, explicit softmax."""
    outs = []
    qs = ks = 0
    for lq, lk in zip(q_lens, k_lens):
        heads = []
        for h in range(q.shape[1]):
            qh, kh, vh = q[qs:qs + lq, h], k[ks:ks + lk, h], v[ks:ks + lk, h]
            s = qh @ kh.T / math.sqrt(q.shape[2])
            p = torch.exp(s - s.max(dim=1, keepdim=True).values)
            heads.append((p / p.sum(dim=1, keepdim=True)) @ vh)
        outs.append(torch.stack(heads, dim=1))
        qs += lq
        ks += lk
    return torch.cat(outs)
