"""bench/contrastive.py runs end to end in smoke mode and writes finite numbers (not a measurement).

Providers eager, triton and auto: torch.compile adds about a minute per run on this CPU; the
benchmark itself runs all four (``python bench/contrastive.py --smoke``). Every case kind of the
GPU sweep (square, distributed rows x gathered columns, M-MoCo chunks, MoCo v2 queue) runs.
"""
from __future__ import annotations

import math

from _bench_smoke import positive_timing, run_smoke


def test_contrastive_bench_smoke(tmp_path):
    doc, _ = run_smoke("contrastive", tmp_path, ("eager", "triton", "auto"))
    assert doc["ceilings"]["matmul_tflops"] > 0
    seen = set()
    for r in doc["records"]:
        seen.add((r["case"]["case"], r["case"]["M"], r["case"]["C"], r["provider"]))
        for key in ("fwd", "bwd", "total"):
            assert positive_timing(r[key]), (key, r)
        for key in ("tflops_fwd", "tflops_bwd", "tflops_total", "pct_matmul", "host_ms"):
            assert math.isfinite(r["extra"][key]) and r["extra"][key] > 0, (key, r)
        if r["provider"] == "triton":
            assert math.isfinite(r["extra"]["speedup_vs_eager"]) and r["extra"]["speedup_vs_eager"] > 0
    shapes = {("square", 32, 32), ("square", 96, 96), ("dist", 16, 96), ("mmoco", 96, 12), ("queue", 8, 96)}
    assert seen == {s + (p,) for s in shapes for p in ("eager", "triton", "auto")}
