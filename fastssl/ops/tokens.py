"""MAE token ops: random masking, gather of the kept tokens, scatter back with mask tokens.

Conventions (MAE's models_mae.py): mask 0 = keep, 1 = removed; ``ids_keep`` [B, K] lists the kept
patch indices in MAE's (random) order; positional embeddings are ``[L, D]``, patch positions only.

Dispatch (``backend``): "auto" runs the Triton kernels (``fastssl.kernels.tokens``) on CUDA
tensors and the eager reference (``fastssl.ops.reference``) elsewhere; "reference" / "triton"
force one (the Triton kernels also run on CPU under ``TRITON_INTERPRET=1``, which the tests use).

The kernels (``fastssl.kernels.tokens``) enter as the custom ops ``fastssl::gather_tokens`` and
``fastssl::scatter_tokens`` (each with a ``_bwd`` op) at the end of this file, fake functions and
autograd registered once: one graph node each inside ``torch.compile``; eager code takes the ops'
eager doors (``fastssl.ops.dispatch.eager_door``), built from the same functions. The custom op
costs ~45 µs more Python per forward + backward (measured on CPU with an empty body: 76 µs vs 29 µs
for an autograd.Function), which at B = 256 is more than the kernels' whole device time.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastssl.ops import reference
from fastssl.ops.dispatch import Backend, backward_impl, eager_door, empty_flag, use_triton
from fastssl.ops.host_copy import to_device


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample uniformly random subset of K = int(L·(1 − mask_ratio)) kept patches, as MAE.

    Returns ``(ids_keep [B, K] int64, ids_restore [B, L] int64, mask [B, L] float32)``:
    ``ids_keep`` is the first K entries of a random permutation ``ids_shuffle`` (kept tokens in
    that random order), ``ids_restore = argsort(ids_shuffle)`` (position of patch l in the
    shuffle, MAE's unshuffle index), ``mask[b, l] = 0`` if l is kept else 1.

    Not a kernel, on purpose: it touches O(B·L) integers (B·196 for ViT-B), a rounding error next
    to the O(B·L·D) token traffic, and torch's batched sort of uniform noise is already one
    launch; keeping it in torch also keeps torch's RNG semantics (``generator``,
    ``torch.manual_seed``). Argsort of i.i.d. uniform noise gives a uniform random permutation
    (ties have probability ~0), so every K-subset is equally likely.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if batch_size < 1 or num_patches < 1:
        raise ValueError(f"batch_size and num_patches must be >= 1, got {batch_size}, {num_patches}")
    keep = int(num_patches * (1 - mask_ratio))
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps no patch out of {num_patches}")
    device = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
    # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
    noise_device = generator.device if generator is not None else device
    noise = to_device(torch.rand(batch_size, num_patches, generator=generator, device=noise_device), device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, ids_restore, mask


def _check_ids(ids_keep: torch.Tensor, batch: int, device: torch.device) -> None:
    if ids_keep.ndim != 2 or ids_keep.shape[0] != batch:
        raise ValueError(f"ids_keep must be [B={batch}, K], got {tuple(ids_keep.shape)}")
    if ids_keep.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids_keep must be int32 or int64, got {ids_keep.dtype}")
    if ids_keep.device != device:
        raise ValueError(f"ids_keep is on {ids_keep.device}, tokens on {device}")


def _check_pos(pos_embed: torch.Tensor | None, num_patches: int, dim: int) -> None:
    if pos_embed is not None and tuple(pos_embed.shape) != (num_patches, dim):
        raise ValueError(f"pos_embed must be [L={num_patches}, D={dim}] (patch positions, no CLS), got {tuple(pos_embed.shape)}")


def gather_tokens(
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    pos_embed: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Kept tokens plus their positional embeddings (MAE encoder input after masking).

    x [B, L, D], ids_keep [B, K] (distinct indices per row), pos_embed [L, D] or None -> [B, K, D]:
        out[b, k] = x[b, ids_keep[b, k]] + pos_embed[ids_keep[b, k]]
    Backward: dx scatters the gradient back (zeros at removed positions); d pos_embed sums it over
    the batch. Output dtype = torch's promotion of x and pos_embed (as ``x + pos_embed``).
    """
    if x.ndim != 3:
        raise ValueError(f"x must be [B, L, D], got {tuple(x.shape)}")
    _check_ids(ids_keep, x.shape[0], x.device)
    _check_pos(pos_embed, x.shape[1], x.shape[2])
    if use_triton(backend, x.device):
        return triton_gather_tokens(x, ids_keep, pos_embed)
    return reference.gather_tokens(x, ids_keep, pos_embed)


def scatter_tokens(
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    num_patches: int,
    mask_token: torch.Tensor,
    pos_embed: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Full-length decoder input: kept tokens at their positions, the mask token elsewhere, + pos.

    x [B, K, D], ids_keep [B, K] (distinct), mask_token with D elements ([D] or MAE's [1, 1, D]),
    pos_embed [L, D] or None -> [B, L, D], L = num_patches:
        out[b, l] = (x[b, k] if ids_keep[b, k] == l else mask_token) + pos_embed[l]
    Backward: dx[b, k] = g[b, ids_keep[b, k]]; d mask_token = Σ over removed (b, l) of g[b, l];
    d pos_embed[l] = Σ_b g[b, l]. Output dtype = promotion of x, mask_token and pos_embed.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be [B, K, D], got {tuple(x.shape)}")
    _check_ids(ids_keep, x.shape[0], x.device)
    if ids_keep.shape[1] != x.shape[1] or x.shape[1] > num_patches:
        raise ValueError(f"ids_keep {tuple(ids_keep.shape)} must match x {tuple(x.shape)} with K <= L={num_patches}")
    if mask_token.numel() != x.shape[2]:
        raise ValueError(f"mask_token must hold D={x.shape[2]} values, got shape {tuple(mask_token.shape)}")
    _check_pos(pos_embed, num_patches, x.shape[2])
    if use_triton(backend, x.device):
        return triton_scatter_tokens(x, ids_keep, num_patches, mask_token, pos_embed)
    return reference.scatter_tokens(x, ids_keep, num_patches, mask_token, pos_embed)


# =============================================================================================
# The kernels as custom ops: bodies (they call ``fastssl.kernels.tokens``' launchers, imported
# lazily so that CPU-only use never imports Triton), fake functions, autograd, eager doors, wrappers.
# =============================================================================================
def _door_open() -> bool:
    return not torch.compiler.is_compiling()


# --- gather: out[b, k] = x[b, ids[b, k]] + pos[ids[b, k]] --------------------------------------
def _gather_body(x: Tensor, ids: Tensor, pos: Optional[Tensor]) -> Tensor:
    """x [B, L, D], ids [B, K], pos [L, D] or None -> [B, K, D]."""
    from fastssl.kernels.tokens import gather_fwd

    return gather_fwd(x.contiguous(), ids.contiguous(), pos.contiguous() if pos is not None else None)


def _gather_bwd_body(g: Tensor, ids: Tensor, x_shape: list[int], x_dtype: torch.dtype, pos_dtype: torch.dtype,
                     need_dx: bool, need_dpos: bool) -> tuple[Tensor, Tensor]:
    """g [B, K, D] -> (dx [B, L, D], dpos [L, D]), empty where not needed."""
    from fastssl.kernels.tokens import gather_bwd

    dx, dpos = gather_bwd(g, ids.contiguous(), tuple(x_shape), x_dtype, pos_dtype, need_dx, need_dpos)
    return (dx if need_dx else empty_flag(g, x_dtype)), (dpos if need_dpos else empty_flag(g, pos_dtype))


_gather_op = torch.library.custom_op("fastssl::gather_tokens", _gather_body, mutates_args=())
_gather_bwd_op = torch.library.custom_op("fastssl::gather_tokens_bwd", _gather_bwd_body, mutates_args=())


@_gather_op.register_fake
def _(x, ids, pos):
    dtype = x.dtype if pos is None else torch.promote_types(x.dtype, pos.dtype)
    return x.new_empty((x.shape[0], ids.shape[1], x.shape[2]), dtype=dtype)


@_gather_bwd_op.register_fake
def _(g, ids, x_shape, x_dtype, pos_dtype, need_dx, need_dpos):
    dx = g.new_empty(x_shape, dtype=x_dtype) if need_dx else empty_flag(g, x_dtype)
    dpos = g.new_empty((x_shape[1], x_shape[2]), dtype=pos_dtype) if need_dpos else empty_flag(g, pos_dtype)
    return dx, dpos


def _gather_setup(ctx, inputs, output):
    x, ids, pos = inputs
    ctx.save_for_backward(ids)
    ctx.x_meta = (list(x.shape), x.dtype, pos.dtype if pos is not None else x.dtype)


def _gather_backward(ctx, g):
    """dx scatters g back (zeros at removed positions), dpos sums it over the batch: one pass."""
    (ids,) = ctx.saved_tensors
    need_dx, _, need_dpos = ctx.needs_input_grad
    if not (need_dx or need_dpos):
        return None, None, None
    bwd = backward_impl(ctx, _gather_bwd_op, _gather_bwd_body)
    dx, dpos = bwd(g, ids, *ctx.x_meta, bool(need_dx), bool(need_dpos))
    return (dx if need_dx else None), None, (dpos if need_dpos else None)


_gather_op.register_autograd(_gather_backward, setup_context=_gather_setup)
_GatherDoor = eager_door(_gather_body, _gather_setup, _gather_backward)


def triton_gather_tokens(x: Tensor, ids_keep: Tensor, pos_embed: Tensor | None = None) -> Tensor:
    """The kernels' ``gather_tokens`` (shapes and checks in ``gather_tokens``)."""
    return _GatherDoor.apply(x, ids_keep, pos_embed) if _door_open() else _gather_op(x, ids_keep, pos_embed)


# --- scatter: out[b, l] = (x[b, k(b, l)] if kept else mt) + pos[l] -----------------------------
def _scatter_body(x: Tensor, ids: Tensor, num_patches: int, mt: Tensor, pos: Optional[Tensor]) -> Tensor:
    """x [B, K, D], ids [B, K], mt [D] (any shape of D elements), pos [L, D] or None -> out [B, L, D]."""
    from fastssl.kernels.tokens import scatter_fwd

    return scatter_fwd(x.contiguous(), ids.contiguous(), num_patches, mt.reshape(-1).contiguous(),
                       pos.contiguous() if pos is not None else None)


def _scatter_bwd_body(g: Tensor, ids: Tensor, x_dtype: torch.dtype, mt_dtype: torch.dtype, pos_dtype: torch.dtype,
                      need_dx: bool, need_dmt: bool, need_dpos: bool) -> tuple[Tensor, Tensor, Tensor]:
    """g [B, L, D] -> (dx [B, K, D], dmt [D], dpos [L, D]) in the inputs' dtypes, empty where not needed."""
    from fastssl.kernels.tokens import scatter_bwd

    dx, dmt, dpos = scatter_bwd(g, ids.contiguous(), x_dtype, mt_dtype, pos_dtype, need_dx, need_dmt, need_dpos)
    return (dx if need_dx else empty_flag(g, x_dtype),
            dmt if need_dmt else empty_flag(g, mt_dtype),
            dpos if need_dpos else empty_flag(g, pos_dtype))


_scatter_op = torch.library.custom_op("fastssl::scatter_tokens", _scatter_body, mutates_args=())
_scatter_bwd_op = torch.library.custom_op("fastssl::scatter_tokens_bwd", _scatter_bwd_body, mutates_args=())


@_scatter_op.register_fake
def _(x, ids, num_patches, mt, pos):
    dtype = torch.promote_types(x.dtype, mt.dtype)
    if pos is not None:
        dtype = torch.promote_types(dtype, pos.dtype)
    return x.new_empty((x.shape[0], num_patches, x.shape[2]), dtype=dtype)


@_scatter_bwd_op.register_fake
def _(g, ids, x_dtype, mt_dtype, pos_dtype, need_dx, need_dmt, need_dpos):
    b, l, d = g.shape
    k = ids.shape[1]
    return (g.new_empty((b, k, d), dtype=x_dtype) if need_dx else empty_flag(g, x_dtype),
            g.new_empty((d,), dtype=mt_dtype) if need_dmt else empty_flag(g, mt_dtype),
            g.new_empty((l, d), dtype=pos_dtype) if need_dpos else empty_flag(g, pos_dtype))


def _scatter_setup(ctx, inputs, output):
    x, ids, num_patches, mt, pos = inputs
    ctx.save_for_backward(ids)
    ctx.meta = (x.dtype, mt.shape, mt.dtype, pos.dtype if pos is not None else x.dtype)


def _scatter_backward(ctx, g):
    """dx gathers g at the kept positions; dmt sums g over the removed ones, dpos over the batch."""
    (ids,) = ctx.saved_tensors
    x_dtype, mt_shape, mt_dtype, pos_dtype = ctx.meta
    need_dx, _, _, need_dmt, need_dpos = ctx.needs_input_grad
    if not (need_dx or need_dmt or need_dpos):
        return None, None, None, None, None
    bwd = backward_impl(ctx, _scatter_bwd_op, _scatter_bwd_body)
    dx, dmt, dpos = bwd(g, ids, x_dtype, mt_dtype, pos_dtype, bool(need_dx), bool(need_dmt), bool(need_dpos))
    return (dx if need_dx else None), None, None, (dmt.reshape(mt_shape) if need_dmt else None), (dpos if need_dpos else None)


_scatter_op.register_autograd(_scatter_backward, setup_context=_scatter_setup)
_ScatterDoor = eager_door(_scatter_body, _scatter_setup, _scatter_backward)


def triton_scatter_tokens(x: Tensor, ids_keep: Tensor, num_patches: int, mask_token: Tensor,
                          pos_embed: Tensor | None = None) -> Tensor:
    """The kernels' ``scatter_tokens`` (shapes and checks in ``scatter_tokens``)."""
    args = (x, ids_keep, num_patches, mask_token, pos_embed)
    return _ScatterDoor.apply(*args) if _door_open() else _scatter_op(*args)
