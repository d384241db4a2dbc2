"""bench/train_host_ops.py in smoke mode (MAE on timm's test ViT, CPU), and what it shows.

The counts are exact (ops dispatched, not times), so the smoke run can hold the trainer to issue 20's
budget in host work: the autocast trainer step at ZeRO 0 (the GPU default) dispatches no more than the
bare model step plus 5 %, with no host-device sync. Before DeepSpeed's default clipping was turned off
where the loop clips and the lone rank's all-reduce skipped, it dispatched twice the bare step's ops."""
from __future__ import annotations

import json

from _bench_smoke import run_script


def test_train_host_ops_smoke(tmp_path):
    run_script("train_host_ops", "--smoke", "--variants", "autocast,ds-bf16,autocast-z2,ds-bf16-z2", out_dir=tmp_path)
    doc = json.loads((tmp_path / "train-host-ops-smoke.json").read_text())
    assert doc["smoke"] is True and (tmp_path / "train-host-ops-smoke.md").is_file()
    (row,) = doc["rows"]
    assert "error" not in row, row.get("error")
    bare, autocast, ds = row["bare"], row["autocast"], row["ds-bf16"]
    assert bare["kernel_ops"] > 100 and bare["syncs"] == 0
    assert "view" in bare["no_kernel"] and bare["kernel_ops"] < bare["ops"]
    assert autocast["optimizer"] == "AdamW" and autocast["syncs"] == 0
    assert autocast["kernel_ops"] <= 1.05 * bare["kernel_ops"], (autocast["kernel_ops"], bare["kernel_ops"])
    # DeepSpeed's bf16 wrapper: per-parameter work and host reads (its overflow check) on every step
    assert ds["kernel_ops"] > 2 * bare["kernel_ops"] and ds["syncs"] >= bare["param_tensors"]
    # ZeRO 2 on one rank: DeepSpeed's ZeRO optimizer copies every gradient into its flat partition and
    # the result back (>= 2 copies per tensor); the rows are there for notes/gpu.md's table
    for v in ("autocast-z2", "ds-bf16-z2"):
        assert row[v]["by_op"].get("copy_", 0) >= 2 * bare["param_tensors"], v


def test_every_method_s_trainer_step_adds_no_per_tensor_work(tmp_path):
    """Every method, the GPU default (autocast at ZeRO 0): the trainer adds a fixed handful of kernel
    ops to the bare step (the loop's multi-tensor clipping, DeepSpeed's step bookkeeping: 18-19 when
    counted) and no sync, whatever the number of weight tensors: nothing per parameter crept back in
    (before this wave: ~3 ops per weight tensor, from DeepSpeed's default clipping and a one-rank
    all-reduce)."""
    from bench.train_plan import METHODS

    run_script("train_host_ops", "--smoke", "--methods", ",".join(METHODS), "--variants", "autocast", out_dir=tmp_path)
    rows = json.loads((tmp_path / "train-host-ops-smoke.json").read_text())["rows"]
    assert [r["method"] for r in rows] == list(METHODS)
    for r in rows:
        assert "error" not in r, (r["method"], r.get("error"))
        extra = r["autocast"]["kernel_ops"] - r["bare"]["kernel_ops"]
        assert 0 <= extra <= 24 and r["autocast"]["syncs"] == 0, (r["method"], extra, r["autocast"]["syncs"])
