"""bench/throughput.py runs end to end in smoke mode and writes finite numbers (not a measurement).

Providers eager and triton only: a cold torch.compile of the training step takes about two minutes
on this CPU (and the compiled Triton loss does not trace in the interpreter); the benchmark itself
runs all four (``python bench/throughput.py --smoke``). Also checks the benchmark's FLOP formula
(its MFU numerator) against torch's FlopCounterMode on a real SimCLR step.
"""
from __future__ import annotations

import math
import sys

import torch
from _bench_smoke import ROOT, positive_timing, run_script, run_smoke


def test_throughput_bench_smoke(tmp_path):
    doc, _ = run_smoke("throughput", tmp_path, ("eager", "triton"))
    assert doc["ceilings"]["matmul_tflops"] > 0
    seen = set()
    for r in doc["records"]:
        seen.add(r["provider"])
        assert positive_timing(r["total"]), r
        for key in ("images_per_s", "tflops", "mfu_pct", "flops_per_step", "speedup_vs_eager"):
            assert math.isfinite(r["extra"][key]) and r["extra"][key] > 0, (key, r)
        # images/s is the batch over the median step time (B images per step, each seen as two views)
        assert math.isclose(r["extra"]["images_per_s"], r["case"]["batch"] / (r["total"]["median"] / 1e3), rel_tol=1e-9)
        assert math.isfinite(r["extra"]["first_loss"])
    assert seen == {"eager", "triton"}


def test_step_flops_matches_counted_flops():
    """The analytic count (6·P·T + 12·L·D·T² per view, ×2B) against the matmul FLOPs torch counts.

    SDPA is forced onto its math path so the counter sees the attention bmm's; 32 px / patch 4 gives
    T = 65 tokens on a width-64 model, where attention is ~15 % of the total (a wrong coefficient shows).
    The formula counts biases and norms as if they were weights, hence a tolerance of a few percent.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT))
    from bench.throughput import build, step_flops

    from fastssl.data.batch import Batch
    from fastssl.methods.base import StepContext

    batch = 16
    model, _ = build("test_vit", 32, 4, "dcl", "reference", torch.device("cpu"))
    index = torch.arange(batch)
    views = Batch({"views": torch.randn(2, batch, 3, 32, 32)}, index, index)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(views, StepContext(0, 1, 1, 0)).loss.backward()
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert counts.get("aten.bmm", 0) > 0.1 * counter.get_total_flops(), counts  # attention was counted
    assert math.isclose(step_flops(model, batch), counter.get_total_flops(), rel_tol=0.04), (step_flops(model, batch), counts)


def test_masked_throughput_bench_smoke(tmp_path):
    """``bench/masked_step.py --smoke`` (``throughput.py --masked``): both providers for every
    (method, n, m), finite numbers, the ratios against the n = 1, m = 1 row, and packed and eager
    agreeing on the first loss (checked inside the bench)."""
    import json

    run_script("masked_step", "--smoke", out_dir=tmp_path)
    (path,) = tmp_path.glob("throughput-masked-*-smoke.json")
    assert path.with_suffix(".png").is_file()
    records = json.loads(path.read_text())["records"]
    cells = {(r["case"]["method"], r["case"]["n"], r["case"]["m"], r["provider"]) for r in records}
    assert cells == {(meth, n, m, p) for meth in ("mmoco", "mbyol") for n in (1, 4) for m in (1, 4) for p in ("packed", "eager")}
    for r in records:
        assert r["error"] is None and positive_timing(r["total"]), r
        e = r["extra"]
        for key in ("images_per_s", "flops_per_step", "flop_ratio", "time_ratio", "time_vs_packed"):
            assert math.isfinite(e[key]) and e[key] > 0, (key, r)
        if (r["case"]["n"], r["case"]["m"]) == (1, 1):
            assert e["flop_ratio"] == 1.0 and e["time_ratio"] == 1.0
        else:  # every chunk adds a CLS token: on 16 patches the linear work grows with n and m
            assert e["flop_ratio"] > 1.0


def test_masked_step_flops_match_counted_flops():
    """The masked bench's analytic count against torch's FlopCounterMode on a real M-MoCo step
    (64 patches in 5 unequal online chunks, 2 target chunks), SDPA on its math path so attention is
    counted; biases and norms ride along in the parameter count, hence a few percent."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT))
    from bench.masked_step import Case, build, step_flops

    from fastssl.data.batch import Batch
    from fastssl.methods.base import StepContext

    case, n, m = Case("test_vit", 32, 4, 6, 48, 16), 5, 2
    method = build("mmoco", case, n, m, torch.device("cpu"))
    index = torch.arange(case.batch)
    views = Batch({"views": torch.randn(2, case.batch, 3, 32, 32)}, index, index)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        method(views, StepContext(0, 1, 1, 0)).loss.backward()
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert counts.get("aten.bmm", 0) > 0.05 * counter.get_total_flops(), counts
    assert math.isclose(step_flops(method, case.batch, n, m), counter.get_total_flops(), rel_tol=0.05), (step_flops(method, case.batch, n, m), counts)


def test_masked_image_throughput_bench_smoke(tmp_path):
    """``bench/masked_image.py --smoke`` (``throughput.py --mae``): eager and fastssl rows for MAE,
    CAN and DAC with finite positive numbers, and both providers starting from the same loss (same
    weights, same inputs, same masks)."""
    import json

    run_script("masked_image", "--smoke", out_dir=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    (path,) = tmp_path.glob("throughput-masked-image-*-smoke.json")
    records = json.loads(path.read_text())["records"]
    assert {(r["case"]["method"], r["provider"]) for r in records} == {(m, p) for m in ("mae", "can", "dac") for p in ("eager", "fastssl")}
    first = {}
    for r in records:
        assert r["error"] is None and positive_timing(r["total"]), r
        assert math.isfinite(r["extra"]["images_per_s"]) and r["extra"]["images_per_s"] > 0
        first.setdefault(r["case"]["method"], []).append(r["extra"]["first_loss"])
    for method, (a, b) in first.items():
        # CAN's two paths draw their noise from different streams (fastssl: patchify_noise): close, not equal
        assert math.isclose(a, b, rel_tol=0.05 if method == "can" else 1e-4), (method, a, b)


def test_throughput_flags_forward_to_their_benches(monkeypatch):
    """``throughput.py --accel|--masked|--compile|--mae ...`` runs that bench's ``main`` with the rest
    of the command line; without such a flag nothing is forwarded."""
    import importlib

    sys.path.insert(0, str(ROOT))
    from bench.throughput import FORWARDS, forward

    for flag, module in FORWARDS.items():
        seen = []
        monkeypatch.setattr(importlib.import_module(f"bench.{module}"), "main", seen.append)
        assert forward(["--smoke", flag, "--out-dir", "x"])
        assert seen == [["--smoke", "--out-dir", "x"]], (flag, seen)
    assert not forward(["--smoke", "--quick"])
