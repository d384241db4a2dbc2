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
          "switch_off", "host_helpers", "every_launch_site")


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("launch") / "checks.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("check", CHECKS)
def test_direct_launch(records, check):
    assert records.get(f"check_{check}") == "ok", records.get(f"check_{check}", "not run")


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
