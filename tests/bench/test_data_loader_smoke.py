"""bench/data_loader.py runs end to end in smoke mode (a few dozen PNGs in a temporary folder, DALI on
the CPU) and writes finite images/s for the train and eval loaders (not a measurement)."""
from __future__ import annotations

import json
import math

import pytest
from _bench_smoke import positive_timing, run_smoke

pytest.importorskip("nvidia.dali")


def test_data_loader_bench_smoke(tmp_path):
    doc, stdout = run_smoke("data_loader", tmp_path, ("train", "eval"))
    assert [r["provider"] for r in doc["records"]] == ["train", "eval"]
    for r in doc["records"]:
        assert positive_timing(r["total"]), r
        # images/s is one window's images (2 batches of 8) over the window's median time
        assert math.isclose(r["extra"]["images_per_s"], 16 / (r["total"]["median"] / 1e3), rel_tol=1e-9), r
    summary = json.loads(stdout[:stdout.rindex("}") + 1])
    assert summary["train_images_timed"] == summary["eval_images_timed"] == 2 * 16
    assert summary["train_two_view_images_per_s"] > 0 and summary["eval_images_per_s"] > 0
