"""bench/accel_step.py runs end to end in smoke mode (timm's test ResNet, 16 px, CPU) and writes a row
per (method, variant) with finite step times (not a measurement)."""
from __future__ import annotations

import json
import math

from _bench_smoke import run_script

VARIANTS = ("standard", "PB", "HP", "PB+HP")


def test_accel_step_bench_smoke(tmp_path):
    run_script("accel_step", "--smoke", "--methods", "simclr,swav", out_dir=tmp_path)
    (path,) = tmp_path.glob("throughput-accel-cpu-smoke.json")
    assert path.with_suffix(".png").is_file()
    rows = json.loads(path.read_text())["rows"]
    assert [(r["method"], r["variant"]) for r in rows] == [(m, v) for m in ("simclr", "swav") for v in VARIANTS]
    for r in rows:
        assert math.isfinite(r["step_ms"]) and r["step_ms"] > 0, r
        # PB: one time per stage (the draw forced), the step time their mean; otherwise the last stage only
        assert sorted(r["per_stage_ms"]) == (["1", "2", "3", "4"] if "PB" in r["variant"] else ["4"]), r
        if r["variant"] == "standard":
            assert r["ratio"] == 1.0
