"""bench/host_path.py runs end to end in smoke mode (the stand-in driver, two ops; not a measurement)."""
from __future__ import annotations

import json
import math

from _bench_smoke import run_script


def test_host_path_bench_smoke(tmp_path):
    run_script("host_path", "--smoke", out_dir=tmp_path)
    doc = json.loads((tmp_path / "host-path-smoke.json").read_text())
    assert (tmp_path / "host-path-smoke.png").is_file() and doc["smoke"] is True
    rows = {r["case"]: r for r in doc["rows"]}
    # the launches a call makes on a 132-SM device: NT-Xent at 2N = 8192 = unit rows, forward, LSE merge of
    # the 4 column splits, symmetric backward, sum of its split partials, unit rows' backward; gather = 2
    assert rows["nt_xent 4096+4096 x 256"]["launches"] == 6
    assert rows["gather_tokens B=256 (+pos)"]["launches"] == 2
    for r in rows.values():
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("jit_us", "direct_us"))
    # the contrastive loss also timed as its chain of autograd nodes (the token op has none)
    assert math.isfinite(rows["nt_xent 4096+4096 x 256"]["nodes_us"]) and "nodes_us" not in rows["gather_tokens B=256 (+pos)"]
    assert all(math.isfinite(v) and v > 0 for v in doc["launch_alone_us"].values())
