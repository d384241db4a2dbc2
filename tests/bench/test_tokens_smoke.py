"""bench/tokens.py runs end to end in smoke mode and writes finite numbers (not a measurement).

Providers eager and triton only: torch.compile of three ops costs more than a minute on this CPU;
the benchmark itself runs all three (``python bench/tokens.py --smoke``).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tokens_bench_smoke(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tokens.py"), "--smoke", "--providers", "eager,triton", "--out-dir", str(tmp_path)],
        check=True, cwd=ROOT, env=env, timeout=300,
    )
    jsons = list(tmp_path.glob("tokens-*-smoke.json"))
    assert len(jsons) == 1 and jsons[0].with_suffix(".png").is_file()
    doc = json.loads(jsons[0].read_text())
    assert doc["smoke"] is True
    seen = set()
    for r in doc["records"]:
        assert r["error"] is None, r
        seen.add((r["case"]["op"], r["provider"]))
        timings = [r["fwd"], r["total"]] + ([r["bwd"]] if r["case"]["op"] != "patchify_noise" else [])
        for t in timings:
            assert all(math.isfinite(t[k]) and t[k] > 0 for k in ("median", "p20", "p80"))
        assert math.isfinite(r["extra"]["gbps_total"]) and r["extra"]["gbps_total"] > 0
    assert seen == {(op, p) for op in ("gather", "scatter", "patchify_noise") for p in ("eager", "triton")}
