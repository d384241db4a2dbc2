"""Shared by the benchmark smoke tests: run ``bench/<name>.py --smoke`` into a tmp dir, load its JSON."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_smoke(name: str, out_dir: Path, providers: tuple[str, ...]) -> tuple[dict, str]:
    """Run the benchmark in smoke mode with ``providers``; returns (its results JSON, its stdout).

    Checks what every benchmark promises: one JSON and its PNG, marked as smoke, no failed case.
    """
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--smoke", "--providers", ",".join(providers),
         "--out-dir", str(out_dir)],
        check=True, cwd=ROOT, env=env, timeout=300, capture_output=True, text=True,
    )
    jsons = list(out_dir.glob(f"{name}-*-smoke.json"))
    assert len(jsons) == 1 and jsons[0].with_suffix(".png").is_file()
    doc = json.loads(jsons[0].read_text())
    assert doc["smoke"] is True
    for r in doc["records"]:
        assert r["error"] is None, r
    return doc, proc.stdout


def positive_timing(t: dict) -> bool:
    return all(math.isfinite(t[q]) and t[q] > 0 for q in ("median", "p20", "p80"))
