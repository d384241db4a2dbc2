"""fastssl's Triton kernels, installed as ``fastssl.kernels``.

One file per kernel family: forward and backward kernels and their launchers, no autograd. The
maths each kernel implements is written in its comments; the eager reference it must match lives
in ``fastssl.ops.reference``; the custom ops, their autograd and the dispatch in
``fastssl.ops.<family>`` (the recipe for a new kernel: ``fastssl/ops/__init__.py``).
"""
