"""Views -> packed input tokens (patch embedding + positional embedding + CLS), only for the
patches a view actually uses.

Masked and chunked views gather the *pixels* of the patches they keep and embed only those
(``gather_tokens`` on ``[B, N, C·p·p]`` patch vectors, then the patch-embed matmul on K rows),
rather than embedding all N patches and gathering embeddings. Patch embedding is one linear map
per patch, so both give the same tokens, but gathering first makes the embed GEMM and its weight
gradient proportional to the kept patches (K = N/4 for MAE), whereas embed-then-gather would run
the forward GEMM and the weight-gradient GEMM over all N rows, three quarters of which get a zero
gradient. The positional embedding is then looked up for the same indices (``F.embedding``,
whose backward sums into the table). Full views skip the gather.

Patch vectors are laid out (c, p, q) so that ``patch_embed.proj.weight.view(D, -1)`` (timm's
Conv2d, stride = kernel = p) is the matrix: ``linear(patch) == conv2d(image)`` patch by patch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastssl.models.vit.chunks import random_permutation, split_chunks
from fastssl.models.vit.pos_embed import resample_patch_pos
from fastssl.models.vit.views import ChunkedView, ImageView, MaskedView, PatchesView, View
from fastssl.ops import gather_tokens


@dataclass(frozen=True)
class EmbedParams:
    """The ViT's embedding parameters, as tensors (so gradients flow to the module's parameters)."""

    patch_size: int
    weight: torch.Tensor  # [D, C, p, p]
    bias: torch.Tensor | None  # [D]
    cls: torch.Tensor  # [D], CLS token + its positional embedding
    pos: torch.Tensor  # [H*W, D], native grid, patch positions only
    grid: tuple[int, int]  # native (H, W) in patches


@dataclass(frozen=True)
class SegmentTokens:
    """``count`` sequences of equal length: tokens ``[count, L(+1), D]``, the grid index of every
    patch token ``patch_ids [count, L]``, and the view-batch image each sequence comes from."""

    tokens: torch.Tensor
    patch_ids: torch.Tensor
    owner: torch.Tensor


def patchify_chw(images: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/p)·(W/p), C·p·p]``, row-major patches, vector order (c, p, q)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def view_grid(images: torch.Tensor, ep: EmbedParams) -> tuple[int, int]:
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    c, h, w = images.shape[1:]
    p = ep.patch_size
    if c != ep.weight.shape[1] or h % p or w % p or h < p or w < p:
        raise ValueError(f"images [B, {c}, {h}, {w}] do not fit patch size {p} with {ep.weight.shape[1]} channels")
    return h // p, w // p


def _embed(pixels: torch.Tensor, ids: torch.Tensor | None, pos: torch.Tensor, ep: EmbedParams, with_cls: bool) -> torch.Tensor:
    """pixels ``[S, L, C·p·p]``, ids ``[S, L]`` (None: positions 0..L-1) -> ``[S, L(+1), D]``."""
    w = ep.weight.reshape(ep.weight.shape[0], -1)
    tok = F.linear(pixels.to(w.dtype), w, ep.bias)
    # No cast of the positional term: under autocast tok is bf16 and pos fp32, so the sum (the
    # residual stream) is fp32, exactly as in timm (``patch_embed(x) + pos_embed``).
    tok = tok + (pos.unsqueeze(0) if ids is None else F.embedding(ids, pos))
    if with_cls:
        tok = torch.cat([ep.cls.to(tok.dtype).expand(tok.shape[0], 1, -1), tok], dim=1)
    return tok


def embed_view(view: View, ep: EmbedParams) -> tuple[str, int, tuple[int, int], list[SegmentTokens]]:
    """One view -> (kind, n_chunks, grid, segments)."""
    if isinstance(view, PatchesView):
        return "masked", 1, view.grid, [_embed_patches(view, ep)]
    grid = view_grid(view.images, ep)
    n = grid[0] * grid[1]
    b = view.images.shape[0]
    dev = view.images.device
    pos = resample_patch_pos(ep.pos, ep.grid, grid)
    pixels = patchify_chw(view.images, ep.patch_size)
    owner = torch.arange(b, device=dev)
    if isinstance(view, ImageView):
        ids = torch.arange(n, device=dev).expand(b, n)
        return "image", 1, grid, [SegmentTokens(_embed(pixels, None, pos, ep, view.cls), ids, owner)]
    if isinstance(view, MaskedView):
        ids = view.ids_keep
        if ids.ndim != 2 or ids.shape[0] != b or not 1 <= ids.shape[1] <= n:
            raise ValueError(f"ids_keep must be [B={b}, K] with 1 <= K <= {n}, got {tuple(ids.shape)}")
        ids = ids.long()
        kept = gather_tokens(pixels, ids, None)
        return "masked", 1, grid, [SegmentTokens(_embed(kept, ids, pos, ep, view.cls), ids, owner)]
    if isinstance(view, ChunkedView):
        perm = view.perm if view.perm is not None else random_permutation(b, n, device=dev)
        if tuple(perm.shape) != (b, n):
            raise ValueError(f"perm must be [B={b}, N={n}], got {tuple(perm.shape)}")
        segs = []
        for grp in split_chunks(perm.long(), view.n_chunks, equal=view.equal):  # [c, B, L]
            c, _, length = grp.shape
            kept = gather_tokens(pixels, grp.transpose(0, 1).reshape(b, c * length), None)  # [B, c·L, Cpp]
            kept = kept.view(b, c, length, -1).transpose(0, 1).reshape(c * b, length, -1)
            ids = grp.reshape(c * b, length)
            segs.append(SegmentTokens(_embed(kept, ids, pos, ep, view.cls), ids, owner.repeat(c)))
        return "chunked", view.n_chunks, grid, segs
    raise TypeError(f"not a view: {type(view).__name__}")


def _embed_patches(view: PatchesView, ep: EmbedParams) -> SegmentTokens:
    """Patch vectors in ``patchify``'s (p, q, c) order: the patch-embed matrix is permuted to that
    order (``weight [D, C, p, p] -> [D, p, p, C]``) instead of permuting the pixels back."""
    b, k, length = view.patches.shape
    p, c = ep.patch_size, ep.weight.shape[1]
    if length != p * p * c:
        raise ValueError(f"patches must hold p*p*C = {p * p * c} values, got {length}")
    ids = view.ids_keep
    n = view.grid[0] * view.grid[1]
    if tuple(ids.shape) != (b, k) or k > n:
        raise ValueError(f"ids_keep must be [B={b}, K={k}] with K <= {n}, got {tuple(ids.shape)}")
    pos = resample_patch_pos(ep.pos, ep.grid, view.grid)
    pqc = EmbedParams(p, ep.weight.permute(0, 2, 3, 1), ep.bias, ep.cls, ep.pos, ep.grid)
    owner = torch.arange(b, device=view.patches.device)
    return SegmentTokens(_embed(view.patches, ids.long(), pos, pqc, view.cls), ids.long(), owner)
