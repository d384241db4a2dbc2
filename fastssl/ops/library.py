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

Registered: ``patchify`` (fwd/bwd) and ``patchify_noise`` (no gradient).
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
