"""What the pytest-benchmark cases share (``bench/test_bench_*.py``): the device, the GPU-only mark,
a synchronising wrapper, and whether the pytest-benchmark plugin is installed."""
from __future__ import annotations

import statistics
import time

import pytest
import torch

CUDA = torch.cuda.is_available()
gpu_only = pytest.mark.skipif(not CUDA, reason="GPU-sized case: needs CUDA")

try:
    import pytest_benchmark  # noqa: F401

    HAVE_PLUGIN = True
except ImportError:
    HAVE_PLUGIN = False


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def synced(fn):
    """``fn`` followed by a device sync, so a host-side timer measures the device work."""
    def run():
        out = fn()
        sync()
        return out
    return run


class Standin:
    """The part of pytest-benchmark's ``benchmark`` fixture the cases use (call, pedantic, group,
    extra_info), for a machine without the plugin: one warm-up call, five timed, the median printed."""

    def __init__(self, name: str):
        self.name, self.group, self.extra_info = name, None, {}
        self.median_ms: float | None = None

    def __call__(self, fn, *args, **kwargs):
        fn(*args, **kwargs)
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            samples.append(time.perf_counter() - t0)
        self.median_ms = 1e3 * statistics.median(samples)
        print(f"\n{self.group or ''} {self.name}: median {self.median_ms:.3f} ms")
        return out

    def pedantic(self, fn, args=(), kwargs=None, setup=None, rounds=1, iterations=1, warmup_rounds=0):
        return self(fn, *args, **(kwargs or {}))
