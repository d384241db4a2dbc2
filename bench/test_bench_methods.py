"""pytest-benchmark cases of every method's training step (see ``bench/methods.py`` for the providers).

One case per method × provider × size, grouped per method (``step-<method>``): the CPU size is the
smoke one (timm's test ViT / ResNet at 16 px, B = 8: runs anywhere, CI runs each once), the GPU size
the ``configs/imagenet`` template at B = 128 with bf16 autocast (skipped without CUDA). ``compile``
(engine.compile) is GPU-only here: a cold compile of a step takes minutes on a CPU. The timed call
is one whole step (forward, backward, AdamW, after-step) after one warm-up step.
"""
from __future__ import annotations

import math

import pytest
import torch

from bench.cases import CUDA, gpu_only, synced
from bench.methods import METHODS, build_runner, spec

CASES = [pytest.param(m, p, "cpu", id=f"{m}-{p}-smoke16px-B8-fp32") for m in METHODS for p in ("eager", "fastssl")]
CASES += [pytest.param(m, p, "gpu", id=f"{m}-{p}-imagenet-B128-bf16", marks=gpu_only) for m in METHODS for p in ("eager", "fastssl", "compile")]


@pytest.mark.parametrize("method,provider,size", CASES)
def test_step(benchmark, method, provider, size):
    benchmark.group = f"step-{method}"
    dev = torch.device("cuda" if CUDA else "cpu")
    s = spec(method, "gpu" if size == "gpu" else "smoke", 128 if size == "gpu" else None)
    if size == "cpu":
        torch.set_num_threads(1)
    runner = build_runner(s, provider, dev, size == "gpu", {})
    first = float(runner.step().detach())  # warm-up (and the compile)
    assert math.isfinite(first)
    benchmark.extra_info["first_loss"] = first
    loss = benchmark(synced(runner.step))
    assert torch.isfinite(loss).all()
