"""fastssl's differentiable ops. Dispatch: CUDA tensors → Triton kernels, CPU tensors → reference.

Every op takes ``backend="auto" | "reference" | "triton"`` (``dispatch.py``). An op family is one
kernel file and one op file: ``kernels/<family>.py`` (installed as ``fastssl.kernels.<family>``) holds
the Triton kernels and their launchers only; ``fastssl/ops/<family>.py`` holds the public ops, the
choice between the reference (``reference.py``, the one page of maths) and the kernels, and the
kernels' custom ops, each with its fake function and its autograd registered once. A family that
outgrows one file splits its op file by concept, as ``contrastive`` does: the losses
(``contrastive.py``), the custom ops with their eager doors (``contrastive_doors.py``) and the losses
as one autograd node each (``contrastive_nodes.py``).

Why custom ops: to ``torch.compile`` a Triton launcher is opaque Python (an autotuner, the CPU
interpreter's numpy code) that breaks the graph; a ``torch.library.custom_op`` is one graph node whose
output shapes come from its fake function, on symbolic sizes (no recompile per batch size). Why not
``triton_op``: our launchers pick tiles and splits in Python at launch time and run in the
interpreter on CPU, which Inductor cannot generate code for. Eager calls take the op's eager door,
built from the same functions (``dispatch.eager_door``: the reason and the measured cost there).

Rules the ops follow: arguments are tensors, ``Optional[Tensor]``, ints, floats, bools, ``list[int]``
and dtypes (no generator: draw a seed tensor first, as ``patchify_noise``); outputs never alias
inputs or each other; an output a flag turns off is an empty tensor (``dispatch.empty_flag``);
what the backward needs statically (which gradients, shapes, dtypes) is passed as plain arguments.

Adding a kernel (``patchify`` is the smallest complete example):
1. ``kernels/<family>.py``: the ``@triton.jit`` kernels, maths in comments, and launchers that take
   tensors and return tensors (no autograd).
2. ``fastssl/ops/<family>.py``: for each op a body that calls the launcher (imported inside, so CPU-only
   use never imports Triton), ``torch.library.custom_op("fastssl::<op>", body, mutates_args=())``, its
   ``register_fake``, a ``_bwd`` op the same way when it has a gradient, one ``setup_context`` and one
   backward (kernels through ``dispatch.backward_impl``) given to ``register_autograd`` and to
   ``dispatch.eager_door``; the public op checks its arguments and calls the reference or, when
   ``dispatch.use_triton`` says so, the door (eager) or the op (``torch.compiler.is_compiling()``).
   The reference goes in ``reference.py``; re-export the public op here.
3. Tests: ``tests/ops/test_<family>.py`` against an independent loop reference in float64
   (``tests/ops/_token_loops.py`` and ``tests/ops/_contrastive_loop_ref.py`` are the examples), both
   backends; the op's ``opcheck`` and its compiled ``fullgraph=True`` call in
   ``tests/ops/test_custom_ops.py``; its sm_90 compile check in ``tests/ops/_kernel_aot.py``.
4. Bench: ``bench/<family>.py`` (eager vs compile vs triton, ``bench/common.py`` timing; ``bench/tokens.py``
   is the example) and a pytest-benchmark case in ``bench/test_bench_ops.py``.
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
