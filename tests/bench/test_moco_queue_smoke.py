"""bench/moco_queue.py (info_nce with a MoCo v2 queue) runs end to end in smoke mode and writes finite
numbers (not a measurement). Providers eager and triton only: torch.compile adds about a minute
per shape on this CPU; the benchmark itself runs all three (``python bench/moco_queue.py --smoke``)."""
from __future__ import annotations

import math

from _bench_smoke import positive_timing, run_smoke


def test_queue_bench_smoke(tmp_path):
    doc, _ = run_smoke("moco_queue", tmp_path, ("eager", "triton"))
    assert doc["ceilings"]["matmul_tflops"] > 0
    seen = set()
    for r in doc["records"]:
        seen.add((r["case"]["N"], r["case"]["K"], r["provider"]))
        for key in ("fwd", "bwd", "total"):
            assert positive_timing(r[key]), (key, r)
        for key in ("tflops_fwd", "tflops_bwd", "tflops_total", "pct_matmul"):
            assert math.isfinite(r["extra"][key]) and r["extra"][key] > 0, (key, r)
        if r["provider"] == "triton":
            assert math.isfinite(r["extra"]["speedup_vs_eager"]) and r["extra"]["speedup_vs_eager"] > 0
    assert seen == {(n, k, p) for n in (8, 33) for k in (300,) for p in ("eager", "triton")}
