"""Eager reference of Masked MoCo / Masked BYOL: timm's ViT on dense chunk batches.

Each image's patches (embedded by timm's conv, positional table added) are shuffled with the same
permutation the fastssl method draws from ``ctx.generator()`` and sliced into n chunks; every chunk
gets its own CLS and is encoded as an independent image. The chunks of equal length go through timm's
blocks together as one ``[c·M, 1 + L, D]`` batch (at most two calls: sizes differ by one patch when n
does not divide the grid), which is what a dense implementation does best without padding. The
target encodes the full view (m = 1) or m chunks with a spherical-mean key. Heads per view, the
momentum loop after the optimizer step. Class attention (``cross_attention: true``) is not mirrored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.eager import losses
from bench.eager.nets import cosine_momentum, frozen_copy, gather_rows, head, momentum_update, timm_vit, vit_blocks, vit_tokens


def chunk_sizes(n_patches: int, n: int) -> list[int]:
    q, r = divmod(n_patches, n)
    return [q + 1] * r + [q] * (n - r)


def encode_chunks(vit: nn.Module, images: torch.Tensor, perm: torch.Tensor | None, n: int) -> torch.Tensor:
    """-> CLS ``[n, M, D]`` of every chunk of every image (n = 1: the whole image)."""
    x = vit_tokens(vit, images)
    if n == 1:
        return vit_blocks(vit, x)[:, 0].unsqueeze(0)
    m, out, start = x.shape[0], [], 0
    sizes = chunk_sizes(x.shape[1], n)
    for size in sorted(set(sizes), reverse=True):
        count = sizes.count(size)
        ids = torch.cat([perm[:, start + j * size: start + (j + 1) * size] for j in range(count)])  # chunk-major
        start += count * size
        cls = vit_blocks(vit, gather_rows(x.repeat(count, 1, 1), ids))[:, 0]
        out.append(cls.view(count, m, -1))
    return torch.cat(out)


def heads_per_view(h: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x [c, 2B, D]``: the head on each view's c·B rows -> ``[c, 2B, P]``."""
    c = x.shape[0]
    return torch.cat([h(v.reshape(-1, v.shape[-1])).view(c, v.shape[1], -1) for v in x.chunk(2, dim=1)], dim=1)


class EagerMasked(nn.Module):
    def __init__(self, m):
        super().__init__()
        if m.cfg.cross_attention:
            raise NotImplementedError("the eager reference has no class-attention blocks")
        self.cfg, self.kind = m.cfg, m.cfg.name
        self.vit, self.projector, self.predictor = timm_vit(m.encoder), head(m.projector), head(m.predictor)
        self.target_vit, self.target_projector = frozen_copy(self.vit, self.projector)
        self.patch = m.encoder.patch_size

    def forward(self, batch, ctx) -> torch.Tensor:
        views = batch["views"]
        v, b = views.shape[:2]
        images = views.flatten(0, 1)
        n, m = self.cfg.n_chunks, self.cfg.target_chunks
        npatch = (images.shape[-1] // self.patch) ** 2
        gen = ctx.generator()
        perm = lambda: torch.rand(v * b, npatch, generator=gen).argsort(dim=1).to(images.device)  # noqa: E731
        perm_q = perm() if n > 1 else None
        perm_k = perm() if m > 1 else None
        q = heads_per_view(self.predictor, heads_per_view(self.projector, encode_chunks(self.vit, images, perm_q, n)))
        with torch.no_grad():
            keys = heads_per_view(self.target_projector, encode_chunks(self.target_vit, images, perm_k, m))
            k = keys[0] if m == 1 else F.normalize(F.normalize(keys.float(), dim=-1).sum(0), dim=-1)
        k1, k2 = k.chunk(2)
        if self.kind == "mmoco":
            t = self.cfg.temperature
            return torch.stack([losses.moco_v3(q[j, :b], k2, t) + losses.moco_v3(q[j, b:], k1, t) for j in range(n)]).mean()
        return torch.stack([losses.byol(q[j, :b], k2) + losses.byol(q[j, b:], k1) for j in range(n)]).mean()

    def after_step(self, ctx) -> None:
        mom = cosine_momentum(self.cfg.base_momentum, ctx.progress)
        momentum_update(self.target_vit, self.vit, mom)
        momentum_update(self.target_projector, self.projector, mom)
