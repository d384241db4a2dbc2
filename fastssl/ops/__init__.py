"""fastssl's differentiable ops. Dispatch: CUDA tensors → Triton kernels, CPU tensors → reference.

Every op takes ``backend="auto" | "reference" | "triton"``.
"""
from fastssl.ops.contrastive import dcl, info_nce, nt_xent, spherical_mean
from fastssl.ops.masked_loss import masked_patch_loss
from fastssl.ops.patchify import PatchNoise, patchify, patchify_noise
from fastssl.ops.sinkhorn import sinkhorn
from fastssl.ops.tokens import gather_tokens, random_masking, scatter_tokens

__all__ = ["nt_xent", "dcl", "info_nce", "spherical_mean"]
__all__ += ["random_masking", "gather_tokens", "scatter_tokens", "patchify", "patchify_noise", "PatchNoise"]
__all__ += ["masked_patch_loss"]
__all__ += ["sinkhorn"]
