"""Shared by the benchmark smoke tests: run ``bench/<name>.py --smoke`` into a tmp dir, load its JSON."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, out_dir: Path, env: dict | None = None, timeout: int = 300) -> str:
    """Run ``bench/<name>.py *args --out-dir out_dir`` as a script from the repository root (the
    Triton interpreter on unless the caller's environment says otherwise, ``env`` on top); its stdout."""
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1"), **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args, "--out-dir", str(out_dir)],
                          check=True, cwd=ROOT, env=env, timeout=timeout, capture_output=True, text=True)
    return proc.stdout


def run_smoke(name: str, out_dir: Path, providers: tuple[str, ...], *extra: str, timeout: int = 300) -> tuple[dict, str]:
    """Run the benchmark in smoke mode with ``providers`` (and ``extra`` arguments); returns (its
    results JSON, its stdout).

    Checks what every benchmark promises: one JSON and its PNG, marked as smoke, no failed case.
    """
    stdout = run_script(name, "--smoke", "--providers", ",".join(providers), *extra, out_dir=out_dir, timeout=timeout)
    jsons = list(out_dir.glob(f"{name}-*-smoke.json"))
    assert len(jsons) == 1 and jsons[0].with_suffix(".png").is_file()
    doc = json.loads(jsons[0].read_text())
    assert doc["smoke"] is True
    for r in doc["records"]:
        assert r["error"] is None, r
    return doc, stdout


def positive_timing(t: dict) -> bool:
    return all(math.isfinite(t[q]) and t[q] > 0 for q in ("median", "p20", "p80"))
