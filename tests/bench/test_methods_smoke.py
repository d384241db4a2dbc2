"""bench/methods.py and the pytest-benchmark suite under bench/: they run, and the eager references
compute the same losses as the fastssl methods (so the benchmark compares the same work).

The smoke run happens as on the bare GPU machine: DeepSpeed, DALI and xformers made unimportable in
a fresh interpreter.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from _bench_smoke import ROOT, positive_timing

sys.path.insert(0, str(ROOT))

BLOCKED = ("deepspeed", "nvidia.dali", "xformers", "xformers.ops")
PROBE = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
sys.path.insert(0, ".")
from bench.methods import main
main(["--smoke", "--rounds", "1", "--warmup", "1", "--out-dir", {out!r}])
main(["--smoke", "--rounds", "1", "--warmup", "1", "--methods", "mae,mocov2_accel", "--profile", "--name", "prof", "--out-dir", {out!r}])
for name in {blocked!r}:
    assert sys.modules.get(name) is None, name + " got imported"
"""
# The eager reference draws CAN's noise from its own stream (fastssl's comes from patchify_noise) and
# runs SwAV's projector once over all crops (BN over every crop, as the official main_swav.py), where
# fastssl's BN statistics are per crop resolution: their first losses differ a little, the others not.
LOSS_RTOL = {"can": 5e-2, "swav": 5e-3}


def test_methods_bench_smoke(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    done = subprocess.run([sys.executable, "-c", PROBE.format(blocked=BLOCKED, out=str(tmp_path))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    (path,) = tmp_path.glob("methods-*-smoke.json")
    assert path.with_suffix(".png").is_file()
    doc = json.loads(path.read_text())
    from bench.methods import METHODS

    assert doc["smoke"] and len(doc["meta"]["load_average_start"]) == 3
    seen = {(r["case"]["method"], r["provider"]) for r in doc["records"]}
    assert seen == {(m, p) for m in METHODS for p in ("eager", "fastssl")}
    for r in doc["records"]:
        assert r["error"] is None, r
        e = r["extra"]
        assert positive_timing(r["total"]), r
        assert math.isclose(e["images_per_s"], r["case"]["batch"] / (r["total"]["median"] / 1e3), rel_tol=1e-9)
        assert math.isfinite(e["first_loss"]) and e["speedup_vs_eager"] > 0
        if r["provider"] == "eager":
            # on a GPU the smoke run is bf16 autocast: the two compute in different orders and dtypes
            rtol = 5e-2 if torch.cuda.is_available() else LOSS_RTOL.get(r["case"]["method"], 1e-5)
            assert e["first_loss_rel_diff_vs_fastssl"] <= rtol, r
    (prof,) = tmp_path.glob("prof-*-smoke.json")
    meta = json.loads(prof.read_text())["meta"]
    profiles = meta["profiles"]
    for m in ("mae", "mocov2_accel"):
        for p in ("eager", "fastssl"):
            rows = profiles[f"{m}/{p}"]
            assert math.isclose(sum(meta["profile_categories"][f"{m}/{p}"].values()), 100, abs_tol=1)
            assert rows and all(row["self_cpu_ms"] >= 0 and 0 <= row["pct"] <= 100 for row in rows)
            trace = tmp_path / prof.name.replace(".json", "-traces") / f"{m}-{p}.json.gz"
            assert "traceEvents" in json.loads(gzip.decompress(trace.read_bytes()))


def test_standin_benchmark_fixture():
    """Without the pytest-benchmark plugin (the bare GPU machine) the cases get this stand-in."""
    from bench.cases import Standin

    calls = []
    b = Standin("case")
    b.group = "g"
    assert b(lambda x: calls.append(x) or x, 3) == 3 and len(calls) == 6 and b.median_ms >= 0
    assert b.pedantic(lambda: 7, rounds=3) == 7


@pytest.mark.parametrize("name", ["simclr", "byol", "mocov3", "mmoco", "mae", "dac", "mocov2", "swav",
                                  "simclr_accel", "mocov2_accel", "swav_accel"])
def test_eager_reference_matches_fastssl(name):
    """Step after step (the draws of masks, chunks, Accel stages and regions change with the step;
    queues and momentum targets are updated after each), the eager reference's loss equals the
    fastssl method's, on the same weights and crops. No optimizer step: the weights stay equal."""
    from bench.eager import after_step, build_eager
    from bench.methods import make_batch, spec
    from fastssl.config import load_config
    from fastssl.methods.base import StepContext
    from fastssl.methods.registry import build_method

    torch.set_num_threads(1)
    s = spec(name, "smoke")
    cfg = load_config(s.config, s.overrides)
    torch.manual_seed(0)
    method = build_method(cfg).train()
    ref = build_eager(method)
    batch = make_batch(method, cfg.data.image_size, s.batch, torch.device("cpu"))
    for k in range(5):
        ctx = StepContext(k, 100, 1000, 0)
        expected = method(batch, ctx).loss.detach()
        if hasattr(method, "after_step"):
            method.after_step(ctx)
        got = ref(batch, ctx).detach()
        after_step(ref, ctx)
        torch.testing.assert_close(got, expected, rtol=LOSS_RTOL.get(name, 1e-5), atol=1e-6, msg=f"{name} step {k}")
