"""fastssl's Triton kernels as PyTorch custom ops, so ``torch.compile`` keeps them in its graph.

Why: the kernels' own autograd Functions (``fastssl.kernels.*``) are opaque Python to Dynamo. It
traces into their launchers, meets the autotuner (or, on CPU, the Triton interpreter's numpy code)
and breaks the graph, or fails. A ``torch.library.custom_op`` is one node of the graph instead: the
compiler calls it as it is and learns its output shapes from a *fake* implementation, which runs on
meta / symbolic shapes (so dynamic batch sizes and token counts need no recompile of the op).

Why ``custom_op`` rather than ``triton_op``: ``triton_op`` lets Inductor see into the kernels, but
only when each launch goes through ``wrap_triton`` with plain grids, and our launchers pick tiles,
splits and autotune configs in Python at launch time (and run in the interpreter on CPU, which
Inductor cannot codegen). A custom op keeps the launchers unchanged, costs one dispatcher call
(microseconds, next to a kernel launch) and works on CPU and CUDA alike.

The pattern (copy it for a new op; names live in the ``fastssl::`` namespace)::

    @torch.library.custom_op("fastssl::my_op", mutates_args=())
    def _my_op(x: Tensor, k: int) -> Tensor:            # the eager body: calls the kernel launcher
        from fastssl.kernels.my_family import my_fwd    # lazy: CPU-only use never imports Triton
        return my_fwd(x.contiguous(), k)

    @_my_op.register_fake
    def _(x, k):                                        # shapes/dtypes only, symbolic sizes welcome
        return x.new_empty(x.shape[0], k)

    # with a gradient: a second op for the backward, and the autograd formula that calls it
    @torch.library.custom_op("fastssl::my_op_bwd", mutates_args=())
    def _my_op_bwd(g: Tensor, ...) -> Tensor: ...        # (+ its own register_fake)
    def _my_setup(ctx, inputs, output): ctx.save_for_backward(...)   # inputs as passed to the op
    def _my_backward(ctx, g): return _my_op_bwd(g, ...), None        # one entry per op input
    _my_op.register_autograd(_my_backward, setup_context=_my_setup)

    def my_op(x, k):                                    # the public twin of the kernel module's one
        return _my_op(x, k)

Rules the ops below follow: arguments are tensors, ``Optional[Tensor]``, ints, floats, bools,
``list[int]`` and dtypes (no Python objects such as generators: draw a seed *tensor* before the
call); outputs never alias inputs or each other; an output that a flag turns off is an empty
tensor (the schema has no optional outputs) and the Python wrapper maps it to ``None``;
everything the backward needs to know statically (which gradients, shapes, dtypes) is passed as
plain arguments. Then add the op to ``tests/ops/test_library.py`` (opcheck + a compiled call
with ``fullgraph=True``) and let ``fastssl.ops.<family>`` call the wrapper here when
``use_triton`` says so.

Registered: ``gather_tokens``
and ``scatter_tokens`` (fwd/bwd), ``patchify`` (fwd/bwd) and ``patchify_noise`` (no gradient).
``random_masking`` is plain torch (argsort of uniform noise), which the compiler traces as it is.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_EMPTY = (0,)


def _empty_like_flag(ref: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """The stand-in for an output that a flag switched off (mapped back to None by the wrappers)."""
    return ref.new_empty(_EMPTY, dtype=dtype or ref.dtype)


# =============================================================================================
# tokens (kernels/tokens.py): gather kept tokens (+ pos), scatter them back with the mask token
# =============================================================================================


@torch.library.custom_op("fastssl::gather_tokens", mutates_args=())
def _gather_fwd(x: Tensor, ids: Tensor, pos: Optional[Tensor]) -> Tensor:
    """x [B, L, D], ids [B, K], pos [L, D] or None -> [B, K, D]."""
    from fastssl.kernels.tokens import gather_fwd

    return gather_fwd(x.contiguous(), ids.contiguous(), pos.contiguous() if pos is not None else None)


@_gather_fwd.register_fake
def _(x, ids, pos):
    dtype = x.dtype if pos is None else torch.promote_types(x.dtype, pos.dtype)
    return x.new_empty((x.shape[0], ids.shape[1], x.shape[2]), dtype=dtype)


@torch.library.custom_op("fastssl::gather_tokens_bwd", mutates_args=())
def _gather_bwd(g: Tensor, ids: Tensor, x_shape: list[int], x_dtype: torch.dtype, pos_dtype: torch.dtype,
                need_dx: bool, need_dpos: bool) -> tuple[Tensor, Tensor]:
    """g [B, K, D] -> (dx [B, L, D], dpos [L, D]), empty where not needed."""
    from fastssl.kernels.tokens import gather_bwd

    dx, dpos = gather_bwd(g, ids.contiguous(), tuple(x_shape), x_dtype, pos_dtype, need_dx, need_dpos)
    return (dx if need_dx else _empty_like_flag(g, x_dtype)), (dpos if need_dpos else _empty_like_flag(g, pos_dtype))


@_gather_bwd.register_fake
def _(g, ids, x_shape, x_dtype, pos_dtype, need_dx, need_dpos):
    dx = g.new_empty(x_shape, dtype=x_dtype) if need_dx else _empty_like_flag(g, x_dtype)
    dpos = g.new_empty((x_shape[1], x_shape[2]), dtype=pos_dtype) if need_dpos else _empty_like_flag(g, pos_dtype)
    return dx, dpos


def _gather_setup(ctx, inputs, output):
    x, ids, pos = inputs
    ctx.save_for_backward(ids)
    ctx.x_meta = (list(x.shape), x.dtype, pos.dtype if pos is not None else x.dtype)


def _gather_backward(ctx, g):
    (ids,) = ctx.saved_tensors
    need_dx, _, need_dpos = ctx.needs_input_grad
    if not (need_dx or need_dpos):
        return None, None, None
    dx, dpos = _gather_bwd(g, ids, *ctx.x_meta, bool(need_dx), bool(need_dpos))
    return (dx if need_dx else None), None, (dpos if need_dpos else None)


_gather_fwd.register_autograd(_gather_backward, setup_context=_gather_setup)


def gather_tokens(x: Tensor, ids_keep: Tensor, pos_embed: Tensor | None = None) -> Tensor:
    """``fastssl.kernels.tokens.gather_tokens`` as a custom op (shapes in ``fastssl.ops.tokens``)."""
    return _gather_fwd(x, ids_keep, pos_embed)


@torch.library.custom_op("fastssl::scatter_tokens", mutates_args=())
def _scatter_fwd(x: Tensor, ids: Tensor, num_patches: int, mt: Tensor, pos: Optional[Tensor]) -> Tensor:
    """x [B, K, D], ids [B, K], mt [D], pos [L, D] or None -> out [B, L, D]."""
    from fastssl.kernels.tokens import scatter_fwd

    return scatter_fwd(x.contiguous(), ids.contiguous(), num_patches, mt.reshape(-1).contiguous(),
                       pos.contiguous() if pos is not None else None)


@_scatter_fwd.register_fake
def _(x, ids, num_patches, mt, pos):
    dtype = torch.promote_types(x.dtype, mt.dtype)
    if pos is not None:
        dtype = torch.promote_types(dtype, pos.dtype)
    return x.new_empty((x.shape[0], num_patches, x.shape[2]), dtype=dtype)


@torch.library.custom_op("fastssl::scatter_tokens_bwd", mutates_args=())
def _scatter_bwd(g: Tensor, ids: Tensor, x_dtype: torch.dtype, mt_dtype: torch.dtype, pos_dtype: torch.dtype,
                 need_dx: bool, need_dmt: bool, need_dpos: bool) -> tuple[Tensor, Tensor, Tensor]:
    """g [B, L, D] -> (dx [B, K, D], dmt [D], dpos [L, D]) in the inputs' dtypes, empty where not needed."""
    from fastssl.kernels.tokens import scatter_bwd

    dx, dmt, dpos = scatter_bwd(g, ids.contiguous(), x_dtype, mt_dtype, pos_dtype, need_dx, need_dmt, need_dpos)
    return (dx if need_dx else _empty_like_flag(g, x_dtype),
            dmt if need_dmt else _empty_like_flag(g, mt_dtype),
            dpos if need_dpos else _empty_like_flag(g, pos_dtype))


@_scatter_bwd.register_fake
def _(g, ids, x_dtype, mt_dtype, pos_dtype, need_dx, need_dmt, need_dpos):
    b, l, d = g.shape
    k = ids.shape[1]
    return (g.new_empty((b, k, d), dtype=x_dtype) if need_dx else _empty_like_flag(g, x_dtype),
            g.new_empty((d,), dtype=mt_dtype) if need_dmt else _empty_like_flag(g, mt_dtype),
            g.new_empty((l, d), dtype=pos_dtype) if need_dpos else _empty_like_flag(g, pos_dtype))


def _scatter_setup(ctx, inputs, output):
    x, ids, num_patches, mt, pos = inputs
    ctx.save_for_backward(ids)
    ctx.meta = (x.dtype, mt.shape, mt.dtype, pos.dtype if pos is not None else x.dtype)


def _scatter_backward(ctx, g):
    (ids,) = ctx.saved_tensors
    x_dtype, mt_shape, mt_dtype, pos_dtype = ctx.meta
    need_dx, _, _, need_dmt, need_dpos = ctx.needs_input_grad
    if not (need_dx or need_dmt or need_dpos):
        return None, None, None, None, None
    dx, dmt, dpos = _scatter_bwd(g, ids, x_dtype, mt_dtype, pos_dtype, bool(need_dx), bool(need_dmt), bool(need_dpos))
    return (dx if need_dx else None), None, None, (dmt.reshape(mt_shape) if need_dmt else None), (dpos if need_dpos else None)


_scatter_fwd.register_autograd(_scatter_backward, setup_context=_scatter_setup)


def scatter_tokens(x: Tensor, ids_keep: Tensor, num_patches: int, mask_token: Tensor, pos_embed: Tensor | None = None) -> Tensor:
    """``fastssl.kernels.tokens.scatter_tokens`` as a custom op (shapes in ``fastssl.ops.tokens``)."""
    return _scatter_fwd(x, ids_keep, num_patches, mask_token, pos_embed)


# =============================================================================================
# patchify (kernels/patchify.py)
# =============================================================================================


@torch.library.custom_op("fastssl::patchify", mutates_args=())
def _patchify_fwd(imgs: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, L, p·p·C]."""
    from fastssl.kernels.patchify import patchify_fwd

    return patchify_fwd(imgs.contiguous(), p)


@_patchify_fwd.register_fake
def _(imgs, p):
    b, c, h, w = imgs.shape
    return imgs.new_empty((b, (h // p) * (w // p), p * p * c))


@torch.library.custom_op("fastssl::patchify_bwd", mutates_args=())
def _patchify_bwd(g: Tensor, img_shape: list[int], img_dtype: torch.dtype, p: int) -> Tensor:
    """g [B, L, P] -> d imgs [B, C, H, W] (the inverse permutation)."""
    from fastssl.kernels.patchify import patchify_bwd

    return patchify_bwd(g, tuple(img_shape), img_dtype, p)


@_patchify_bwd.register_fake
def _(g, img_shape, img_dtype, p):
    return g.new_empty(img_shape, dtype=img_dtype)


def _patchify_setup(ctx, inputs, output):
    imgs, p = inputs
    ctx.meta = (list(imgs.shape), imgs.dtype, p)


def _patchify_backward(ctx, g):
    return _patchify_bwd(g, *ctx.meta), None


_patchify_fwd.register_autograd(_patchify_backward, setup_context=_patchify_setup)


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """``fastssl.kernels.patchify.patchify`` as a custom op (differentiable)."""
    return _patchify_fwd(imgs, patch_size)


@torch.library.custom_op("fastssl::patchify_noise", mutates_args=())
def _patchify_noise(imgs: Tensor, p: int, sigma: Tensor, ids_keep: Optional[Tensor], norm_target: bool,
                    seed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> (inputs [B, K|L, P], target [B, L, P], noise [B, K|L, P]); no gradient (loader images).

    ``seed``: a 0-dim integer tensor, read here (inside the op) so that drawing it from torch's RNG
    is no ``.item()`` graph break in a compiled caller."""
    from fastssl.kernels.patchify import patchify_noise

    return patchify_noise(imgs, p, sigma, ids_keep, norm_target, int(seed.item()))


@_patchify_noise.register_fake
def _(imgs, p, sigma, ids_keep, norm_target, seed):
    b, c, h, w = imgs.shape
    L, P = (h // p) * (w // p), p * p * c
    k = L if ids_keep is None else ids_keep.shape[1]
    return imgs.new_empty((b, k, P)), imgs.new_empty((b, L, P)), imgs.new_empty((b, k, P))


def patchify_noise(imgs: Tensor, p: int, sigma: Tensor, ids_keep: Tensor | None, norm_target: bool,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``fastssl.kernels.patchify.patchify_noise`` as a custom op; the Philox seed comes from torch's
    RNG (``generator`` or the default CPU one), so ``torch.manual_seed`` reproduces the noise."""
    dev = generator.device if generator is not None else torch.device("cpu")
    seed = torch.randint(0, 2**31 - 1, (), generator=generator, device=dev)
    return _patchify_noise(imgs, p, sigma.contiguous(), ids_keep, norm_target, seed)
