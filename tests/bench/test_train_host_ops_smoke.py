"""bench/train_host_ops.py in smoke mode (MAE on timm's test ViT, CPU), and what it shows.

The counts are exact (ops dispatched, not times), so the smoke run can hold the trainer to issue 20's
budget in host work: the autocast trainer step at ZeRO 0 (the GPU default) dispatches no more than the
bare model step plus 5 %, with no host-device sync. Before DeepSpeed's default clipping was turned off
where the loop clips and the lone rank's all-reduce skipped, it dispatched twice the bare step's ops."""
from __future__ import annotations

import json

from _bench_smoke import run_script


def test_train_host_ops_smoke(tmp_path):
    run_script("train_host_ops", "--smoke", out_dir=tmp_path)
    doc = json.loads((tmp_path / "train-host-ops-smoke.json").read_text())
    assert doc["smoke"] is True and (tmp_path / "train-host-ops-smoke.md").is_file()
    (row,) = doc["rows"]
    assert "error" not in row, row.get("error")
    bare, autocast, ds = row["bare"], row["autocast"], row["ds-bf16"]
    assert bare["ops"] > 100 and bare["syncs"] == 0
    assert autocast["optimizer"] == "AdamW" and autocast["syncs"] == 0
    assert autocast["ops"] <= 1.05 * bare["ops"], (autocast["ops"], bare["ops"])
    # DeepSpeed's bf16 wrapper: per-parameter work and host reads (its overflow check) on every step
    assert ds["ops"] > 2 * bare["ops"] and ds["syncs"] >= bare["param_tensors"]
