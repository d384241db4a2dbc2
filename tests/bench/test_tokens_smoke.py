"""bench/tokens.py runs end to end in smoke mode and writes finite numbers (not a measurement).

Providers eager and triton only: torch.compile of three ops costs more than a minute on this CPU;
the benchmark itself runs all three (``python bench/tokens.py --smoke``).
"""
from __future__ import annotations

import math

from _bench_smoke import positive_timing, run_smoke


def test_tokens_bench_smoke(tmp_path):
    doc, _ = run_smoke("tokens", tmp_path, ("eager", "triton"))
    seen = set()
    for r in doc["records"]:
        seen.add((r["case"]["op"], r["provider"]))
        timings = [r["fwd"], r["total"]] + ([r["bwd"]] if r["case"]["op"] != "patchify_noise" else [])
        for t in timings:
            assert positive_timing(t)
        assert math.isfinite(r["extra"]["gbps_total"]) and r["extra"]["gbps_total"] > 0
    assert seen == {(op, p) for op in ("gather", "scatter", "patchify_noise") for p in ("eager", "triton")}
