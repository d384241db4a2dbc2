"""bench/roofline.py: the floors are the counts written out by hand, and the committed GPU runs read."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import roofline as R  # noqa: E402


def test_square_floor_by_hand():
    # 2N = 8192, D = 256, rows are the columns: 6·M²·D FLOPs (scores, recomputed scores, (dS + dSᵀ)·Z)
    f = R.contrastive_floor(8192, 8192, 256, 800.0, 4000.0, cols_grad=True, same=True)
    assert f.tensor_ms == pytest.approx(6 * 8192**2 * 256 / 800e12 * 1e3)
    assert f.exp_ms == pytest.approx(2 * 8192**2 / 3.9e12 * 1e3)  # forward + one recomputation
    assert f.memory_ms == pytest.approx((8192 * 256 * 2 * 2 + 8192 * 256 * 2 + 8192 * 16) / 4000e9 * 1e3)
    assert f.overlap_ms == f.tensor_ms and f.serial_ms == pytest.approx(f.tensor_ms + f.exp_ms + f.memory_ms)


def test_distributed_and_key_cases_by_hand():
    m, c, d = 1024, 32768, 256
    least = R.contrastive_work(m, c, d, cols_grad=True, same=False)
    ours = R.contrastive_work(m, c, d, cols_grad=True, same=False, as_implemented=True)
    assert least[:2] == (8 * m * c * d, 2 * m * c)  # one recomputation serves dRows and dCols
    assert ours[:2] == (10 * m * c * d, 3 * m * c)  # the column pass recomputes the scores again
    keys = R.contrastive_work(8192, 1024, d, cols_grad=False, same=False)
    assert keys[:2] == (6 * 8192 * 1024 * d, 2 * 8192 * 1024)  # no dCols for momentum keys


def test_reads_the_committed_gpu_runs(tmp_path):
    out = tmp_path / "roofline.md"
    assert R.main(["--out", str(out)]) == 0
    text = out.read_text()
    assert "| square 8192x8192 | 256 | 0.130 |" in text  # 6·8192²·256 FLOPs at the run's 792.8 TFLOP/s
    assert "| gather | 1024 | 768 | 541 |" in text
