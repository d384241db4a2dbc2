"""A training step of every method queues its work without waiting for the device.

Issue 20's "no host sync per step", checked without a GPU: each method's forward, backward and
``after_step`` run on the meta device (an accelerator without data) under a dispatch mode that records
every op that makes the host wait on CUDA: reads of device values (``item``, ``nonzero`` from boolean
indexing, ...) and *blocking* host-to-device copies (from pageable memory PyTorch synchronises the
stream). The per-step draws on the CPU generator must reach the device as a pinned, non-blocking copy
(``fastssl.ops.host_copy``); here ``meta`` stands for CUDA there, with pinning a no-op.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from _helpers import HostWaits

from bench.train_plan import tiny_overrides
from fastssl.config import load_config
from fastssl.data.synthetic import SyntheticLoader
from fastssl.methods.base import AfterStep, StepContext
from fastssl.methods.registry import build_method, method_names
from fastssl.ops import host_copy

def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return x.to("meta")
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(v) for v in x)
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: _to_meta(getattr(x, f.name)) for f in dataclasses.fields(x)})
    return x


CASES = [(f"configs/imagenet/{m}.yaml", tiny_overrides(m)) for m in method_names()] + [
    (f"configs/fmnist/{m}_accel.yaml", ["data.image_size=16", "model.arch=test_resnet"]) for m in ("simclr", "mocov2", "swav")]


@pytest.mark.parametrize("config, overrides", CASES, ids=[c.split("/")[-1].removesuffix(".yaml") for c, _ in CASES])
def test_a_step_never_waits_for_the_device(config, overrides, monkeypatch):
    monkeypatch.setattr(host_copy, "PINNED", {"cuda", "meta"})
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)  # (meta: no host memory to pin)
    cfg = load_config(config, ["data.synthetic=true", "eval.enabled=false", "optim.batch_size=4", *overrides])
    torch.manual_seed(0)
    method = build_method(cfg).train()
    batch = _to_meta(next(iter(SyntheticLoader(cfg.data, batch_size=4, device="cpu", seed=1, crops=method.crops()))))
    method = method.to("meta")
    ctx = StepContext(3, 1000, 10**6, 0)
    waits = HostWaits()
    with waits:
        out = method(batch, ctx)
        out.loss.backward()
        if isinstance(method, AfterStep):
            method.after_step(ctx)
    assert waits.seen == []
    assert out.loss.device.type == "meta"
