"""What the pytest-benchmark cases share (``bench/test_bench_*.py``): the device, the GPU-only mark,
a synchronising wrapper, and whether the pytest-benchmark plugin is installed."""
from __future__ import annotations

import pytest
import torch

from bench.common import sync, time_fn

CUDA = torch.cuda.is_available()
gpu_only = pytest.mark.skipif(not CUDA, reason="GPU-sized case: needs CUDA")

try:
    import pytest_benchmark  # noqa: F401

    HAVE_PLUGIN = True
except ImportError:
    HAVE_PLUGIN = False


def synced(fn):
    """``fn`` followed by a device sync, so a host-side timer measures the device work."""
    def run():
        out = fn()
        sync()
        return out
    return run


class Standin:
    """The part of pytest-benchmark's ``benchmark`` fixture the cases use (call, pedantic, group,
    extra_info), for a machine without the plugin: ``bench.common.time_fn`` on the host clock (one
    warm-up call, five timed, each followed by a device sync), the median printed."""

    def __init__(self, name: str):
        self.name, self.group, self.extra_info = name, None, {}
        self.median_ms: float | None = None

    def __call__(self, fn, *args, **kwargs):
        result = {}

        def call():
            result["out"] = fn(*args, **kwargs)  # pytest-benchmark returns the function's result

        self.median_ms = time_fn(call, reps=5, host=True).median
        print(f"\n{self.group or ''} {self.name}: median {self.median_ms:.3f} ms")
        return result["out"]

    def pedantic(self, fn, args=(), kwargs=None, setup=None, rounds=1, iterations=1, warmup_rounds=0):
        return self(fn, *args, **(kwargs or {}))
