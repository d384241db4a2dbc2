"""A run lets its DeepSpeed engine go (``Session.release``, called by ``fastssl.engine.loop.run`` last).

DeepSpeed's ZeRO 1/2 optimizer hooks every weight's gradient accumulator, a reference cycle through
C++ that Python's collector cannot break: before the release, each ZeRO 1/2 run in a process (the rows
of ``bench/train.py``, which share one process, or in-process tests) kept its engine, its weights and
its optimizer state alive for good. Both tests fail on the previous main (one optimizer still alive).
"""
from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

from fastssl.config import load_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.train_plan import tiny_overrides  # noqa: E402


def _cfg(tmp_path, name):
    return load_config(ROOT / "configs/imagenet/mae.yaml",
                       ["data.synthetic=true", "eval.enabled=false", f"run.output_dir={tmp_path / name}", "run.resume=never",
                        "engine.progress=false", "engine.precision=fp32", "engine.zero_stage=1", "optim.batch_size=4",
                        "optim.max_steps=2", "optim.warmup_epochs=0", *tiny_overrides("mae")])


def _alive() -> int:
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is DeepSpeedZeroOptimizer)


def test_a_finished_zero1_run_leaves_no_engine_behind(tmp_path, one_rank):
    from fastssl.engine.loop import run

    before = _alive()
    for name in ("a", "b"):
        summary = run(_cfg(tmp_path, name))
        assert summary.steps == 2
    assert _alive() == before


def test_a_failed_run_releases_too_and_keeps_its_error(tmp_path, one_rank, monkeypatch):
    from fastssl.engine import loop

    def broken_finish(s, eval_init):
        raise RuntimeError("the export failed")

    monkeypatch.setattr(loop, "finish", broken_finish)
    before = _alive()
    with pytest.raises(RuntimeError, match="the export failed"):
        loop.run(_cfg(tmp_path, "c"))
    assert _alive() == before
