"""Patchify ops: MAE's patchify and CAN's noisy patch input with MAE's reconstruction target.

Patch vector order (p, q, c) as MAE's patchify (einsum 'nchpwq->nhwpqc'); H and W must be
multiples of the patch size (H != W is fine). ``backend``: "auto" = Triton on CUDA tensors,
reference elsewhere; "reference" / "triton" force one.

Gradients: ``patchify`` is differentiable (its backward is the inverse permutation, one cheap
kernel). ``patchify_noise`` is not: its image comes from the data loader and never needs a
gradient, and the op refuses an image that requires one instead of silently dropping it.

The kernels (``fastssl.kernels.patchify``) enter as the custom ops ``fastssl::patchify`` (with
``fastssl::patchify_bwd``) and ``fastssl::patchify_noise`` at the end of this file: one graph node
each under torch.compile; eager code takes patchify's eager door and calls patchify_noise's body
directly (it has no autograd), as ``fastssl.ops.tokens`` does (the custom op costs tens of µs of
Python per call, ``fastssl.ops.dispatch.eager_door``).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fastssl.ops import reference
from fastssl.ops.dispatch import Backend, backward_impl, eager_door, use_triton


class PatchNoise(NamedTuple):
    """Output of ``patchify_noise``.

    inputs: [B, K, P] noisy kept patches (K = L without ids_keep), the patch embedding's input.
    target: [B, L, P] clean patches, per-patch normalised when norm_target (MAE's norm_pix_loss).
    noise:  [B, K, P] the noise σ_b·ε added to exactly those patches (CAN's denoising target).
    """

    inputs: torch.Tensor
    target: torch.Tensor
    noise: torch.Tensor


def _check_imgs(imgs: torch.Tensor, patch_size: int) -> None:
    if imgs.ndim != 4:
        raise ValueError(f"imgs must be [B, C, H, W], got {tuple(imgs.shape)}")
    if patch_size < 1 or imgs.shape[2] % patch_size or imgs.shape[3] % patch_size:
        raise ValueError(f"H and W must be multiples of patch_size={patch_size}, got {tuple(imgs.shape[2:])}")


def patchify(imgs: torch.Tensor, patch_size: int, *, backend: Backend = "auto") -> torch.Tensor:
    """[B, C, H, W] -> [B, L, p·p·C], L = (H/p)·(W/p) in row-major grid order.

    out[b, i·(W/p) + j, (u·p + v)·C + c] = imgs[b, c, i·p + u, j·p + v]. Differentiable.
    """
    _check_imgs(imgs, patch_size)
    if use_triton(backend, imgs.device):
        return triton_patchify(imgs, patch_size)
    return reference.patchify(imgs, patch_size)


def patchify_noise(
    imgs: torch.Tensor,
    patch_size: int,
    sigma: torch.Tensor | float,
    *,
    ids_keep: torch.Tensor | None = None,
    norm_target: bool = False,
    generator: torch.Generator | None = None,
    backend: Backend = "auto",
) -> PatchNoise:
    """CAN's noisy encoder input, its noise and MAE's reconstruction target from one image read.

    imgs [B, C, H, W]; sigma [B] (or a float for every image): per-image noise level σ_b (CAN §3.4
    samples σ ~ U[0, σ_max], σ_max = 0.05); ids_keep [B, K] or None (all patches).
    Returns ``PatchNoise(inputs, target, noise)``:
        inputs[b, k] = patch(imgs)[b, ids_keep[b, k]] + noise[b, k],  noise = σ_b·ε, ε ~ N(0, I)
        target[b, l] = patch(imgs)[b, l] (clean: CAN's reconstruction target has no noise),
                       MAE-normalised per patch (unbiased var, eps 1e-6) when ``norm_target``.
    Noise is drawn per call: in the Triton kernel from Philox with a seed taken from torch's RNG
    (``generator`` or the default one), in the reference from torch.randn; both are reproducible
    under a seed but they are different streams. Outputs have imgs.dtype; maths is fp32.
    No gradient flows to imgs (see the module docstring).
    """
    _check_imgs(imgs, patch_size)
    if imgs.requires_grad and torch.is_grad_enabled():
        raise ValueError("patchify_noise does not propagate gradients to imgs; pass imgs.detach()")
    b = imgs.shape[0]
    num_patches = (imgs.shape[2] // patch_size) * (imgs.shape[3] // patch_size)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=imgs.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(b)
    if tuple(sigma.shape) != (b,):
        raise ValueError(f"sigma must be a float or [B={b}], got {tuple(sigma.shape)}")
    if ids_keep is not None:
        if ids_keep.ndim != 2 or ids_keep.shape[0] != b or ids_keep.shape[1] > num_patches:
            raise ValueError(f"ids_keep must be [B={b}, K<={num_patches}], got {tuple(ids_keep.shape)}")
        if ids_keep.device != imgs.device:
            raise ValueError(f"ids_keep is on {ids_keep.device}, imgs on {imgs.device}")
    if norm_target and patch_size * patch_size * imgs.shape[1] < 2:
        raise ValueError("norm_target needs at least 2 values per patch (unbiased variance)")
    imgs = imgs.detach()
    if use_triton(backend, imgs.device):
        return PatchNoise(*triton_patchify_noise(imgs, patch_size, sigma, ids_keep, norm_target, generator))
    return PatchNoise(*reference.patchify_noise(imgs, patch_size, sigma, ids_keep, norm_target, generator))


# =============================================================================================
# The kernels as custom ops: bodies (they call ``fastssl.kernels.patchify``'s launchers, imported
# lazily so that CPU-only use never imports Triton), fake functions, autograd, eager door, wrappers.
# =============================================================================================
def _patchify_body(imgs: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, L, p·p·C]."""
    from fastssl.kernels.patchify import patchify_fwd

    return patchify_fwd(imgs.contiguous(), p)


def _patchify_bwd_body(g: Tensor, img_shape: list[int], img_dtype: torch.dtype, p: int) -> Tensor:
    """g [B, L, P] -> d imgs [B, C, H, W] (the inverse permutation)."""
    from fastssl.kernels.patchify import patchify_bwd

    return patchify_bwd(g, tuple(img_shape), img_dtype, p)


_patchify_op = torch.library.custom_op("fastssl::patchify", _patchify_body, mutates_args=())
_patchify_bwd_op = torch.library.custom_op("fastssl::patchify_bwd", _patchify_bwd_body, mutates_args=())


@_patchify_op.register_fake
def _(imgs, p):
    b, c, h, w = imgs.shape
    return imgs.new_empty((b, (h // p) * (w // p), p * p * c))


@_patchify_bwd_op.register_fake
def _(g, img_shape, img_dtype, p):
    return g.new_empty(img_shape, dtype=img_dtype)


def _patchify_setup(ctx, inputs, output):
    imgs, p = inputs
    ctx.meta = (list(imgs.shape), imgs.dtype, p)


def _patchify_backward(ctx, g):
    return backward_impl(ctx, _patchify_bwd_op, _patchify_bwd_body)(g, *ctx.meta), None


_patchify_op.register_autograd(_patchify_backward, setup_context=_patchify_setup)
_PatchifyDoor = eager_door(_patchify_body, _patchify_setup, _patchify_backward)


def triton_patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """The kernels' ``patchify`` (differentiable; backward = unpatchify)."""
    if torch.compiler.is_compiling():
        return _patchify_op(imgs, patch_size)
    return _PatchifyDoor.apply(imgs, patch_size)


def _patchify_noise_body(imgs: Tensor, p: int, sigma: Tensor, ids_keep: Optional[Tensor], norm_target: bool,
                         seed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> (inputs [B, K|L, P], target [B, L, P], noise [B, K|L, P]); no gradient (loader images).

    ``seed``: a 0-dim integer tensor, read here (inside the op) so that drawing it from torch's RNG
    is no ``.item()`` graph break in a compiled caller."""
    from fastssl.kernels.patchify import patchify_noise as launch

    return launch(imgs, p, sigma, ids_keep, norm_target, int(seed.item()))


_patchify_noise_op = torch.library.custom_op("fastssl::patchify_noise", _patchify_noise_body, mutates_args=())


@_patchify_noise_op.register_fake
def _(imgs, p, sigma, ids_keep, norm_target, seed):
    b, c, h, w = imgs.shape
    L, P = (h // p) * (w // p), p * p * c
    k = L if ids_keep is None else ids_keep.shape[1]
    return imgs.new_empty((b, k, P)), imgs.new_empty((b, L, P)), imgs.new_empty((b, k, P))


def triton_patchify_noise(imgs: Tensor, p: int, sigma: Tensor, ids_keep: Tensor | None, norm_target: bool,
                          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The kernels' ``patchify_noise``. The Philox seed is drawn from torch's RNG (``generator`` or the
    default CPU one), so torch.manual_seed / a seeded generator reproduce the noise and every call gets
    new noise; a CUDA generator costs one device sync (the seed reaches the launch as a host int).
    No autograd, hence no door: eager calls run the op's body directly."""
    dev = generator.device if generator is not None else torch.device("cpu")
    seed = torch.randint(0, 2**31 - 1, (), generator=generator, device=dev)
    args = (imgs, p, sigma.contiguous(), ids_keep, norm_target, seed)
    return _patchify_noise_op(*args) if torch.compiler.is_compiling() else _patchify_noise_body(*args)
