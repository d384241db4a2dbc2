"""fastssl's differentiable ops. Dispatch: CUDA tensors → Triton kernels, CPU tensors → reference.

Every op takes ``backend="auto" | "reference" | "triton"``.
"""
from fastssl.ops.contrastive import dcl, info_nce, nt_xent

__all__ = ["nt_xent", "dcl", "info_nce"]
