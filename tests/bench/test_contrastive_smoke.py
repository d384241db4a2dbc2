"""bench/contrastive.py runs end to end in smoke mode and writes finite numbers (not a measurement).

Providers eager and triton only: torch.compile adds about a minute per run on this CPU; the
benchmark itself runs all three (``python bench/contrastive.py --smoke``).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_contrastive_bench_smoke(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "contrastive.py"), "--smoke", "--providers", "eager,triton",
         "--out-dir", str(tmp_path)],
        check=True, cwd=ROOT, env=env, timeout=300,
    )
    jsons = list(tmp_path.glob("contrastive-*-smoke.json"))
    assert len(jsons) == 1 and jsons[0].with_suffix(".png").is_file()
    doc = json.loads(jsons[0].read_text())
    assert doc["smoke"] is True and doc["ceilings"]["matmul_tflops"] > 0
    seen = set()
    for r in doc["records"]:
        assert r["error"] is None, r
        seen.add((r["case"]["2N"], r["provider"]))
        for key in ("fwd", "bwd", "total"):
            assert all(math.isfinite(r[key][q]) and r[key][q] > 0 for q in ("median", "p20", "p80")), (key, r)
        for key in ("tflops_fwd", "tflops_bwd", "tflops_total", "pct_matmul"):
            assert math.isfinite(r["extra"][key]) and r["extra"][key] > 0, (key, r)
        if r["provider"] == "triton":
            assert math.isfinite(r["extra"]["speedup_vs_eager"]) and r["extra"]["speedup_vs_eager"] > 0
    assert seen == {(m, p) for m in (32, 96) for p in ("eager", "triton")}
