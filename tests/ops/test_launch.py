"""The direct launch path (``fastssl.kernels.launch``) stands for Triton's, and the ops' host path is lean.

The launch checks need Triton's JIT, which the interpreter replaces: ``_launch_check.py`` runs them in
one subprocess without TRITON_INTERPRET, under the stand-in driver of ``bench/host_driver.py``
(compiles for sm_90, records what the C launcher would receive), and writes one record per check.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

SCRIPT = Path(__file__).with_name("_launch_check.py")
CHECKS = ("direct_equals_triton", "spec_refines_triton", "hooks_keep_triton_path", "keyword_runtime_arg_falls_back",
          "switch_off", "host_helpers", "launcher_mismatch_falls_back", "every_launch_site", "host_work_per_call")


def test_direct_launch_stands_for_triton(tmp_path):
    """Every check of ``_launch_check.py`` (one test, one subprocess: under pytest-xdist a
    parametrized test would compile the kernels once per worker)."""
    out = tmp_path / "checks.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    records = json.loads(out.read_text())
    assert sorted(records) == sorted(f"check_{c}" for c in CHECKS)
    failed = {name: text for name, text in records.items() if text != "ok"}
    assert not failed, "\n\n".join(f"{name}:\n{text}" for name, text in failed.items())


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("loss", ["nt_xent", "info_nce"])
def test_no_zero_filled_gradients(loss):
    """The backward of a kernel op allocates its outputs and nothing else of torch's: the ops' second
    outputs (LSE, 1/‖row‖) never reach the caller, and their gradients are not materialised as zeros
    (a fill launch each per call on the GPU, as main did before)."""
    from fastssl.ops import contrastive as C

    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(9, 16, generator=g, requires_grad=True)
    z2 = torch.randn(9, 16, generator=g, requires_grad=loss == "nt_xent")
    out = C.nt_xent(z1, z2, 0.2, backend="triton") if loss == "nt_xent" else C.info_nce(z1, z2, 0.2, backend="triton")
    with _Ops() as ops:
        out.backward()
    zeroing = [n for n in ops.names if n.split(".")[0] in ("zeros", "zeros_like", "zero_", "fill_", "new_zeros")]
    assert not zeroing, ops.names
    assert z1.grad is not None and torch.isfinite(z1.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="needs a CUDA device and Triton's JIT")
@pytest.mark.parametrize("op", ["nt_xent", "info_nce_queue", "gather_tokens"])
def test_direct_launch_on_cuda_is_bitwise_triton(op):
    """On the GPU: the same calls through Triton's launch path and through the direct one (warm, so
    every launch class is a hit) give bit-identical losses and gradients (the kernels are deterministic)."""
    from fastssl.kernels import launch as L
    from fastssl.ops import contrastive as C
    from fastssl.ops import tokens as T

    g = torch.Generator(device="cuda").manual_seed(5)
    dev, bf16 = "cuda", torch.bfloat16
    if op == "nt_xent":
        leaves = [torch.randn(333, 96, device=dev, dtype=bf16, generator=g).requires_grad_() for _ in range(2)]
        run = lambda: C.nt_xent(*leaves, 0.1, backend="triton")  # noqa: E731
    elif op == "info_nce_queue":
        leaves = [torch.randn(77, 128, device=dev, dtype=bf16, generator=g).requires_grad_()]
        k, bank = torch.randn(77, 128, device=dev, dtype=bf16, generator=g), torch.randn(4099, 128, device=dev, dtype=bf16, generator=g)
        run = lambda: C.info_nce(leaves[0], k, 0.2, queue=bank, backend="triton")  # noqa: E731
    else:
        leaves = [torch.randn(7, 49, 80, device=dev, dtype=bf16, generator=g).requires_grad_(),
                  torch.randn(49, 80, device=dev, dtype=bf16, generator=g).requires_grad_()]
        ids = torch.rand(7, 49, device=dev, generator=g).argsort(dim=1)[:, :13]
        w = torch.randn(7, 13, 80, device=dev, dtype=bf16, generator=g)
        run = lambda: (T.gather_tokens(leaves[0], ids, leaves[1], backend="triton").float() * w).sum()  # noqa: E731

    def outcome(direct: bool):
        L.OPTIONS["direct"] = direct
        try:
            for _ in range(2):  # the second call's launch classes are all known
                for t in leaves:
                    t.grad = None
                loss = run()
                loss.backward()
            return [loss.detach().clone()] + [t.grad.clone() for t in leaves]
        finally:
            L.OPTIONS["direct"] = True

    for a, b in zip(outcome(False), outcome(True)):
        assert torch.equal(a, b)
