"""scripts/gpu_session.sh without a GPU: the plan fits one device command (<= 9 minutes) with the parts
in the issue's order under their caps, and the caps hold: a part that runs long is stopped at its own
cap, the session ends within SESSION_CAP, and $OUT holds at most 8 files (session log, tar of the logs).
The parts themselves are stood in for by a stub interpreter that sleeps (``PYTHON``); the real parts'
CPU paths run in ``bash scripts/gpu_session.sh dry-run`` (minutes: not a unit test)."""
from __future__ import annotations

import os
import re
import subprocess
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_session.sh"


def _plan(**env) -> str:
    done = subprocess.run(["bash", str(SCRIPT), "plan", "all"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_plan_fits_nine_minutes_in_the_issues_order():
    out = _plan()
    caps = {m[0]: int(m[1]) for m in re.findall(r"^\s+(\S+)\s+cap\s+(\d+)", out, re.M)}
    assert list(caps) == ["set-up", "tests", "contrastive", "tokens", "attention", "train"]
    assert caps["tests"] <= 120 and caps["contrastive"] + caps["tokens"] + caps["attention"] <= 180
    total = int(re.search(r"total: [^=]*= (\d+) s", out).group(1))
    assert total == sum(caps.values()) + 15 <= 540
    assert "bench/train.py --quick" in out and "-n 16" in out or "xdist" not in out


def test_a_longer_part_shortens_the_trainer_not_the_session():
    out = _plan(CAP_TESTS="150")
    total = int(re.search(r"total: [^=]*= (\d+) s", out).group(1))
    # 530 − set-up 60 − collect 15 − tests 150 − contrastive 50 − tokens 55 − attention 60 = 140
    assert total <= 540 and re.search(r"^\s+train\s+cap\s+140\b", out, re.M), out


def test_unknown_part_is_refused():
    done = subprocess.run(["bash", str(SCRIPT), "everything"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown part" in done.stderr


def test_parts_stop_at_their_caps_and_the_session_at_its_own(tmp_path):
    stub = tmp_path / "py"
    stub.write_text('#!/usr/bin/env bash\ncase "$*" in\n  *bench/*|"-m pytest"*) sleep 60 ;;\n  *) exit 0 ;;\nesac\n')
    stub.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHON": str(stub), "OUT": str(out), "FASTSSL_SESSION_LOGS": str(tmp_path / "logs"),
           "SESSION_CAP": "24", "COLLECT_S": "2", "CAP_TESTS": "2", "CAP_CONTRASTIVE": "2", "CAP_TOKENS": "2", "CAP_ATTENTION": "2"}
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT), "all"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = done.stdout
    for part in ("tests", "contrastive", "tokens", "attention"):
        assert f"part {part} STOPPED at its cap of 2 s" in log, log
    assert re.search(r"part train (STOPPED at its cap|SKIPPED)", log), log
    assert took <= 24 + 3, took
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and "session.log" in files and any(f.endswith(".tar.gz") for f in files), files
    with tarfile.open(next(out.glob("*.tar.gz"))) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"tests.log", "contrastive.log", "tokens.log", "attention.log", "session.log"} <= names, names
