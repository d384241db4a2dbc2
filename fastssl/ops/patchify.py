"""Patchify ops: MAE's patchify and CAN's noisy patch input with MAE's reconstruction target.

Patch vector order (p, q, c) as MAE's patchify (einsum 'nchpwq->nhwpqc'); H and W must be
multiples of the patch size (H != W is fine). ``backend``: "auto" = Triton on CUDA tensors,
reference elsewhere; "reference" / "triton" force one.

Gradients: ``patchify`` is differentiable (its backward is the inverse permutation, one cheap
kernel). ``patchify_noise`` is not: its image comes from the data loader and never needs a
gradient, and the op refuses an image that requires one instead of silently dropping it.

As in ``fastssl.ops.tokens``: the custom ops of ``fastssl.ops.library`` under torch.compile, the
kernels' launchers directly in eager code (the custom op costs tens of µs of Python per call).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from fastssl.ops import reference
from fastssl.ops.dispatch import Backend, use_triton


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
        if torch.compiler.is_compiling():
            from fastssl.ops.library import patchify as triton_patchify  # the kernel as a custom op
        else:  # eager: the kernel's autograd.Function, without the custom op's Python overhead
            from fastssl.kernels.patchify import patchify as triton_patchify

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
        # The Philox seed is drawn from torch's RNG (``generator`` or the default CPU one), so
        # torch.manual_seed / a seeded generator reproduce the noise and every call gets new noise;
        # a CUDA generator costs one device sync (the seed reaches the launch as a host int).
        if torch.compiler.is_compiling():
            from fastssl.ops.library import patchify_noise as triton_patchify_noise  # the kernel as a custom op

            return PatchNoise(*triton_patchify_noise(imgs, patch_size, sigma, ids_keep, norm_target, generator))
        from fastssl.kernels.patchify import patchify_noise as kernel_patchify_noise  # eager: no custom-op overhead

        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
        return PatchNoise(*kernel_patchify_noise(imgs, patch_size, sigma, ids_keep, norm_target, seed))
    return PatchNoise(*reference.patchify_noise(imgs, patch_size, sigma, ids_keep, norm_target, generator))
