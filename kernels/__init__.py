"""fastssl's Triton kernels, installed as ``fastssl.kernels``.

One file per kernel family: forward and backward kernels, their launchers and one
``torch.autograd.Function``. The maths each kernel implements is written in its comments; the
eager reference it must match lives in ``fastssl.ops.reference``.
"""
