"""The one place that decides which implementation an op runs: the Triton kernel or the eager reference.

Every op in ``fastssl.ops`` takes ``backend: Backend``:
- "auto": the Triton kernel for CUDA tensors, the reference for anything else;
- "reference" / "triton": force one (Triton also runs on CPU under ``TRITON_INTERPRET=1``, which the
  tests use).
Kernel modules are imported by the ops only when this says Triton, so CPU-only use never needs
Triton to import, and an import failure under "auto" on CUDA is raised rather than hidden.

Doors (``eager_door``, ``backward_impl``): a call that runs a kernel enters through its custom op
under ``torch.compile`` (one graph node, see ``fastssl.ops``) and through the op's eager door
otherwise: an autograd.Function built from the very functions the op registers (its body, its
``setup_context``, its backward), so each backward formula is written once. Why two entry points:
the dispatcher's per-call work for a custom op (schema, alias checks, the generated autograd
wrapper) is host time that a small kernel launch cannot hide. Measured on this project's 2-core
CPU machine (torch 2.13; ``triton_contrastive_rows`` on 64x32 fp32 rows and cols, fwd + bwd, the
kernel launchers replaced by stubs that only allocate their outputs; fastest of 7 x 500 calls,
minus the 39 µs that ``(rows * 1).sum().backward()`` takes): 136-161 µs through the custom op,
28-35 µs through the door (two runs on a shared machine). A door whose backward still called the
backward op paid ~40 µs more, hence ``backward_impl``: the door runs the backward op's body
directly. Issue 21 measured ~0.8 ms per eager NT-Xent on an H200's host through the custom ops.
A loss whose caller averages the per-row output enters through a ``mean_door`` instead: the mean is
taken in the same node, and its gradient reaches the kernels as a scale (notes/host_path.md).

Size rules (``AUTO_SIZE_RULES``, ``auto_size_ok``): an op family whose kernel cannot win at tiny
sizes (a fixed cost per call against little arithmetic) names one threshold here, with the device
it was measured on; under "auto" on CUDA it takes the reference below it. One table, so the
thresholds are set in one place from a benchmark run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Literal

import torch

Backend = Literal["auto", "reference", "triton"]
_BACKENDS = ("auto", "reference", "triton")


def use_triton(backend: Backend, device: torch.device) -> bool:
    """True when an op on tensors of ``device`` must run its Triton kernel (see the module docstring)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be 'auto', 'reference' or 'triton', got {backend!r}")
    return backend == "triton" or (backend == "auto" and device.type == "cuda")


def triton_problem(backend: Backend, device: torch.device) -> str | None:
    """Why ``backend="triton"`` cannot run on ``device`` (one line, for the set-up to refuse the run
    before it starts), or None. The kernels take CUDA tensors, or any tensor under Triton's interpreter
    (``TRITON_INTERPRET=1`` in the environment before the kernels import)."""
    if backend != "triton" or device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return None
    return (f"method.backend=triton runs the Triton kernels, which need a CUDA device (this run is on {device.type}); "
            "use method.backend=auto (the reference off CUDA), or set TRITON_INTERPRET=1 to run them in Triton's interpreter")


@dataclass(frozen=True)
class SizeRule:
    """backend="auto" takes the kernel when ``size >= min_size`` (the op defines ``size``)."""

    min_size: int
    size: str  # what the op measures, in words
    measured_on: str  # the device and run the threshold comes from


AUTO_SIZE_RULES: dict[str, SizeRule] = {
    # M·C = anchors × candidate columns (the logits the eager path materialises). Measured with
    # `python bench/contrastive.py --quick` on one NVIDIA H200 (2026-12-04, bf16, D = 256,
    # bench/results/contrastive-nvidia-h200.json): the kernels' device time is below eager's at every
    # swept shape, the smallest 512 × 8192 (0.092 vs 0.118 ms) and MoCo v2's queue 256 × 65536 (0.161 vs
    # 0.362 ms). Wall time of one isolated call under ~1.5 ms is host-bound on that machine (eager's too) and
    # moves by ±0.2 ms between rows, so it cannot place a threshold; in a training step the host work
    # overlaps the GPU's queue and the device time is what the step pays. Below the smallest swept size
    # the kernel stays unmeasured, so auto keeps the reference there.
    "contrastive": SizeRule(min_size=512 * 8192, size="rows x cols of the similarity matrix",
                            measured_on="NVIDIA H200, 2026-12-04 (device time; smallest swept shape 512 x 8192)"),
}


def auto_size_ok(op: str, backend: Backend, size: int | None) -> bool:
    """Whether a call that ``use_triton`` sends to the kernel keeps it by the size rule of ``op``:
    always for backend="triton" or an unknown size; under "auto", when ``size`` reaches the threshold."""
    rule = AUTO_SIZE_RULES.get(op)
    return backend != "auto" or size is None or rule is None or size >= rule.min_size


def eager_door(forward: Callable, setup_context: Callable, backward: Callable) -> type[torch.autograd.Function]:
    """The eager door of a custom op: ``forward`` is the op's body (what ``torch.library.custom_op``
    wraps), ``setup_context`` and ``backward`` what its ``register_autograd`` got. ``apply`` takes
    the op's arguments in the op's order and returns what the op returns."""

    class EagerDoor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            output = forward(*inputs)
            setup_context(ctx, inputs, output)
            ctx.eager_door = True  # read by ``backward_impl``
            # A second output (the contrastive ops' LSE, unit_rows' 1/‖row‖) is saved for the backward and
            # never returned to the caller, so its gradient is never defined: materialised, it would be
            # a zero-filled tensor per output per call (an allocation and a fill launch each on CUDA).
            # The backwards ignore those slots; the first output's gradient is always defined.
            ctx.set_materialize_grads(False)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    EagerDoor.__name__ = EagerDoor.__qualname__ = f"EagerDoor_{forward.__name__.strip('_')}"
    return EagerDoor


def mean_door(forward: Callable, setup_context: Callable, backward: Callable) -> type[torch.autograd.Function]:
    """The eager door of a custom op whose first output is a per-row loss that the caller averages:
    ``apply`` returns that mean as its only output, so the mean takes no autograd node of its own.
    Its backward hands the op's backward the scalar gradient expanded to the rows (stride 0, no
    copy) with ``ctx.grad_scale`` = 1/M, which the kernels fold into their final scale: torch's
    ``MeanBackward`` (an expand and a division launch per call) is gone, and the forward's mean runs
    without autograd bookkeeping. The registered backwards read ``grad_scale(ctx)``."""

    class MeanDoor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            output = forward(*inputs)
            setup_context(ctx, inputs, output)
            ctx.eager_door = True
            rows = output[0].shape[0]
            ctx.rows, ctx.grad_scale = rows, 1.0 / rows
            return output[0].mean()

        @staticmethod
        def backward(ctx, dmean):
            return backward(ctx, dmean.expand(ctx.rows), None)

    MeanDoor.__name__ = MeanDoor.__qualname__ = f"MeanDoor_{forward.__name__.strip('_')}"
    return MeanDoor


def grad_scale(ctx) -> float:
    """The factor a registered backward applies to its incoming per-row gradient: 1/M behind a
    ``mean_door``, 1 otherwise (the custom op's own autograd, under torch.compile)."""
    return getattr(ctx, "grad_scale", 1.0)


def backward_impl(ctx, op: Callable, body: Callable) -> Callable:
    """What a registered backward calls for its kernels: the backward custom op ``op`` (a graph node
    the compiler needs), or in the eager door that op's ``body`` directly (no dispatcher)."""
    return body if getattr(ctx, "eager_door", False) else op


def empty_flag(ref: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The stand-in for a custom op's output that a flag switched off (a schema has no optional
    outputs): an empty tensor, which the op's wrapper or backward maps back to None."""
    return ref.new_empty((0,), dtype=dtype or ref.dtype)
