"""bench/contrastive.py runs end to end in smoke mode and writes finite numbers (not a measurement).

Providers eager and triton only: torch.compile adds about a minute per run on this CPU; the
benchmark itself runs all three (``python bench/contrastive.py --smoke``).
"""
from __future__ import annotations

import math

from _bench_smoke import positive_timing, run_smoke


def test_contrastive_bench_smoke(tmp_path):
    doc, _ = run_smoke("contrastive", tmp_path, ("eager", "triton"))
    assert doc["ceilings"]["matmul_tflops"] > 0
    seen = set()
    for r in doc["records"]:
        seen.add((r["case"]["2N"], r["provider"]))
        for key in ("fwd", "bwd", "total"):
            assert positive_timing(r[key]), (key, r)
        for key in ("tflops_fwd", "tflops_bwd", "tflops_total", "pct_matmul"):
            assert math.isfinite(r["extra"][key]) and r["extra"][key] > 0, (key, r)
        if r["provider"] == "triton":
            assert math.isfinite(r["extra"]["speedup_vs_eager"]) and r["extra"]["speedup_vs_eager"] > 0
    assert seen == {(m, p) for m in (32, 96) for p in ("eager", "triton")}
