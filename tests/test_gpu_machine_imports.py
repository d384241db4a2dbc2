"""The kernel tests and kernel benchmarks run on a GPU machine without DeepSpeed, DALI or xformers.

A lent GPU machine has CUDA torch, triton, timm and torchvision but none of the three (DESIGN.md);
``scripts/gpu_session.sh`` runs tests/ops, tests/models and the kernel benchmarks there. Here, in a
fresh interpreter, those packages are made unimportable (a ``None`` entry in ``sys.modules`` makes
``import x`` raise ImportError) and everything on those paths is imported and collected.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("deepspeed", "nvidia.dali", "xformers", "xformers.ops")
MODULES = (
    "fastssl.kernels.contrastive", "fastssl.kernels.contrastive_tiles", "fastssl.kernels.tokens",
    "fastssl.kernels.patchify", "fastssl.ops", "fastssl.models", "fastssl.engine.sync_bn",
    "bench.common", "bench.contrastive", "bench.tokens", "bench.attention", "bench.throughput",
)

_PROBE = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
import importlib
for name in {BLOCKED!r}:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{{name}} was not blocked")
for name in {MODULES!r}:
    importlib.import_module(name)
import pytest
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/ops", "tests/models", "tests/bench"])
for name in {BLOCKED!r}:
    assert sys.modules.get(name) is None, f"{{name}} got imported"
raise SystemExit(int(code))
"""


def test_kernel_paths_import_without_deepspeed_dali_xformers():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "tests collected" in done.stdout, done.stdout[-1000:]
