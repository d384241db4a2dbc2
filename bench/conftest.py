"""pytest-benchmark cases of the op and method benchmarks (``bench/test_bench_*.py``).

    pytest bench/ --benchmark-only                        # time every case that fits this device
    pytest bench/ --benchmark-only --benchmark-autosave   # keep the run (.benchmarks/), then
    pytest-benchmark compare 0001 0002                    # compare it with another commit's
    pytest bench/ --benchmark-disable                     # CI: each case runs once, nothing is timed

Cases are grouped by op or method (``benchmark.group``) with ids ``<provider>-<size>-<dtype>``, e.g.
``test_nt_xent[triton-2N8192-D256-bf16]``. GPU-sized cases skip without CUDA; on CPU the Triton
kernels run in the interpreter (tiny sizes only: a check that they run, not a measurement).

Without the pytest-benchmark plugin (the bare GPU machine) a stand-in ``benchmark`` fixture runs each
case a few times and prints the median, so ``pytest bench/`` still works there.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # before any kernel module is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastssl  # noqa: E402,F401  (the torchvision shim before timm)
import pytest  # noqa: E402

from bench.cases import HAVE_PLUGIN, Standin  # noqa: E402

if not HAVE_PLUGIN:
    @pytest.fixture
    def benchmark(request):
        return Standin(request.node.name)

    def pytest_configure(config):
        config.addinivalue_line("markers", "benchmark(**kwargs): pytest-benchmark options (ignored without the plugin)")
