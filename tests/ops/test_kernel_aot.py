"""Every kernel variant a launcher or the autotuner can pick compiles for sm_90, fits, and does not spill.

The interpreter tests never run GPU code generation; ``_kernel_aot.py`` compiles each variant for an
H100 (Triton + the bundled ptxas, no GPU needed) in one subprocess per test session (TRITON_INTERPRET
must be unset there) and writes one record per variant; the tests below read those records.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("_kernel_aot.py")
KERNELS = ("fwd", "fwd_queue", "bwd_rows", "bwd_cols")  # fwd_queue: the forward of info_nce with a queue


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("aot") / "variants.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), "--jobs", "2"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _name(r: dict) -> str:
    return f"{r['family']}/{r['kernel']}/{r['dtype']}/D={r['D']}/{r['config']}{'/' + r['flags'] if 'flags' in r else ''}"


def test_every_variant_compiles(report):
    records = report["records"]
    assert len(records) == report["variants"] > 200
    failed = [f"{_name(r)}: {r['error'][:300]}" for r in records if "error" in r or not r.get("cubin")]
    assert not failed, "\n".join(failed)


def test_shared_memory_fits_sm90(report):
    limit = report["smem_limit"]
    over = [f"{_name(r)}: {r['smem']} B" for r in report["records"] if r["smem"] > limit]
    assert not over, "\n".join(over)


def test_pruning_estimate_bounds_the_compiled_shared_memory(report):
    """The launcher prunes configs by ``contrastive_tiles.smem_need``: it must not under-estimate."""
    recs = [r for r in report["records"] if "smem_estimate" in r]
    assert recs
    under = [f"{_name(r)}: compiled {r['smem']} B > estimate {r['smem_estimate']} B" for r in recs if r["smem"] > r["smem_estimate"]]
    assert not under, "\n".join(under)


def test_every_dtype_and_feature_size_has_configs(report):
    """fp32, bf16 and fp16 at every D class (D = 512 stands for every D > 256) can launch each kernel."""
    have = {(r["kernel"], r["dtype"], r["D"]) for r in report["records"] if r["family"] == "contrastive"}
    missing = [(k, dt, d) for k in KERNELS for dt in ("fp32", "bf16", "fp16") for d in report["contrastive_ds"]
               if (k, dt, d) not in have]
    assert not missing


def test_no_spills_at_16_bit(report):
    """bf16/fp16: no contrastive config at D <= 256 and no token/patchify variant spills registers."""
    spills = [f"{_name(r)}: {r['spill_stores']} B stored, {r['spill_loads']} B loaded ({r['regs']} regs)"
              for r in report["records"]
              if r["dtype"] in ("bf16", "fp16") and (r["family"] == "tokens" or r["D"] <= 256)
              and (r["spill_stores"] or r["spill_loads"])]
    assert not spills, "\n".join(spills)


def test_16_bit_contrastive_on_wgmma_without_duplicate_scores(report):
    """bf16/fp16 contrastive tiles run on Hopper's wgmma (no mma.sync fallback), and a backward
    program issues no more wgmma than its forward twin of the same tile (the scores are computed
    once per tile, not once per warpgroup; the backward adds the second matmul, so at most 2×)."""
    recs = [r for r in report["records"] if r["family"] == "contrastive" and r["kernel"] in KERNELS
            and r["dtype"] in ("bf16", "fp16") and r["D"] >= 64]
    assert recs
    assert not [_name(r) for r in recs if r["mma_sync"] or not r["wgmma"]]
    fwd = {(r["dtype"], r["D"], r["config"]): r["wgmma"] for r in recs if r["kernel"] == "fwd"}
    compared = 0
    for r in recs:
        m, rest = r["config"].split("x", 1)
        n, tail = rest.split("w", 1)
        own_first = f"{n}x{m}w{tail}" if r["kernel"] == "bwd_cols" else r["config"]  # dCols owns BLOCK_N
        twin = fwd.get((r["dtype"], r["D"], own_first))
        if r["kernel"] != "fwd" and twin is not None:
            assert r["wgmma"] <= 2 * twin, (_name(r), r["wgmma"], twin)
            compared += 1
    assert compared
