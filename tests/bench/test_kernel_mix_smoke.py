"""bench/kernel_mix.py in smoke mode: the contrastive forward compiled for sm_90 both ways (CPU, no GPU).

Also the property the mask-free tiles rest on, checked on the compiled code: the loop body keeps two
paths (the compiler did not if-convert them into one that issues both) and the plain path issues fewer
instructions per tile than the masked one and than the kernel before the change, without spills."""
from __future__ import annotations

import json

from _bench_smoke import run_script


def test_kernel_mix_smoke(tmp_path):
    run_script("kernel_mix", "--smoke", out_dir=tmp_path, env={"TRITON_INTERPRET": "0"})
    doc = json.loads((tmp_path / "kernel-mix-smoke.json").read_text())
    assert doc["smoke"] is True and (tmp_path / "kernel-mix-smoke.png").is_file()
    (row,) = doc["rows"]
    assert row["kernel"] == "fwd" and row["paths_after"] == 2
    n = row["instructions_per_tile"]
    assert n["after_plain"] < n["after_masked"] and n["after_plain"] < n["before"]
    # the plain path drops the compares and selects: no FSEL / ISETP.NE of the masking left in it
    assert not [op for op in row["ops_plain"] if op.startswith("FSEL")], row["ops_plain"]
    assert row["ops_before"].get("FSEL", 0) > 0
    assert row["spill_bytes"] == {"before": 0, "after": 0}
