"""Every kernel variant a launcher or the autotuner can pick compiles for sm_90, fits, and does not spill.

The interpreter tests never run GPU code generation; ``_kernel_aot.py`` compiles each variant for an
H100 (Triton + the bundled ptxas, no GPU needed) in one subprocess per test session (TRITON_INTERPRET
must be unset there) and writes one record per variant; the tests below read those records. The
subprocess starts when the run is collected and runs in the background (``start_in_background``).
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("_kernel_aot.py")
KERNELS = ("fwd", "fwd_queue", "bwd_rows", "bwd_queue", "bwd_cols")  # *_queue: info_nce with a queue (QUEUE)
# The Triton of the lent GPU machine (CUDA torch 2.11 there), installed beside the venv's own by
# scripts/setup.sh: its compiler is what runs the kernels there, and 3.6 rejected a loop that 3.7 compiled.
GPU_TRITON = Path(__file__).resolve().parents[2] / ".venv" / "gpu-triton"
BUILDS = ("installed", "gpu-machine")
# The GPU machine's build compiles fp32 and bf16, what runs there (the benches' rows, bf16 training).
# fp16 is the same 16-bit code path as bf16 up to the conversions (same tiles, registers, wgmma); the
# installed build compiles it, which keeps the suite's largest CPU cost (~5 CPU-minutes a build) a third lower.
DTYPES = {"installed": "fp32,bf16,fp16", "gpu-machine": "fp32,bf16"}


def _gpu_triton_version() -> str | None:
    """The GPU machine's Triton beside the venv, if it is there, built for this Python, and not the
    installed Triton itself (then the installed build's records are its records)."""
    import triton

    found = sorted(GPU_TRITON.glob("triton-*.dist-info"))
    python = f"Tag: cp{sys.version_info.major}{sys.version_info.minor}-"
    if not found or python not in (found[0] / "WHEEL").read_text():  # its compiled part is per Python
        return None
    version = found[0].name[len("triton-"):-len(".dist-info")]
    return None if version == triton.__version__ else version


_BACKGROUND: dict = {}  # build -> the compile subprocess of this pytest process, once started


def _start(build: str) -> dict:
    folder = tempfile.TemporaryDirectory(prefix="fastssl-aot-")
    log = open(Path(folder.name) / "stderr.log", "w+")  # a file: a pipe nobody reads could fill and block it
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if build == "gpu-machine":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(GPU_TRITON), env.get("PYTHONPATH"))))
    out = Path(folder.name) / "variants.json"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--jobs", "2", "--dtypes", DTYPES[build]], env=env,
                            stdout=subprocess.DEVNULL, stderr=log, preexec_fn=lambda: os.nice(10), start_new_session=True)
    atexit.register(_stop, proc)  # a run that ends before the fixture (-x, Ctrl-C) leaves no compile behind
    _BACKGROUND[build] = dict(folder=folder, out=out, log=log, proc=proc)
    return _BACKGROUND[build]


def _start_all() -> None:
    for build in BUILDS:
        if build not in _BACKGROUND and (build != "gpu-machine" or _gpu_triton_version()):
            _start(build)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the script and its pool workers
        proc.wait()


def start_in_background() -> None:
    """Start the compile subprocesses as soon as the run is collected (``tests/conftest.py`` calls this
    when this module's tests are selected): their CPU-minutes then overlap the tests before them, most
    of which keep one of the two cores busy. Niced, so the foreground tests keep priority. Not under
    pytest-xdist, where every worker collects everything: there the fixture starts them."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        _start_all()


@pytest.fixture(scope="module", params=BUILDS)
def report(request) -> dict:
    """The records of one Triton build: the installed one, and the GPU machine's (both started at once)."""
    build = request.param
    if build == "gpu-machine" and not _gpu_triton_version():
        pytest.skip(f"no GPU-machine Triton for this Python in {GPU_TRITON}, or it is the installed one "
                    "(bash scripts/setup.sh installs it)")
    _start_all()
    run = _BACKGROUND[build]
    try:
        code = run["proc"].wait(timeout=1200)
        run["log"].seek(0)
        assert code == 0, run["log"].read()[-3000:]
        return {**json.loads(run["out"].read_text()), "build": build}
    finally:
        _stop(run["proc"])
        run["log"].close()
        run["folder"].cleanup()


def test_each_build_is_the_triton_it_names(report):
    import triton

    want = _gpu_triton_version() if report["build"] == "gpu-machine" else triton.__version__
    assert report["triton"] == want


def _name(r: dict) -> str:
    return f"{r['family']}/{r['kernel']}/{r['dtype']}/D={r['D']}/{r['config']}{'/' + r['flags'] if 'flags' in r else ''}"


def _compiled(report) -> list[dict]:
    """The variants that compiled (the others fail ``test_every_variant_compiles``, once)."""
    return [r for r in report["records"] if "error" not in r]


def test_every_variant_compiles(report):
    records = report["records"]
    assert len(records) == report["variants"] > 200
    failed = [f"{_name(r)}: {r['error'][:300]}" for r in records if "error" in r or not r.get("cubin")]
    assert not failed, "\n".join(failed)


def test_shared_memory_fits_sm90(report):
    limit = report["smem_limit"]
    over = [f"{_name(r)}: {r['smem']} B" for r in _compiled(report) if r["smem"] > limit]
    assert not over, "\n".join(over)


def test_pruning_estimate_bounds_the_compiled_shared_memory(report):
    """The launcher prunes configs by ``contrastive_tiles.smem_need``: it must not under-estimate."""
    recs = [r for r in _compiled(report) if "smem_estimate" in r]
    assert recs
    under = [f"{_name(r)}: compiled {r['smem']} B > estimate {r['smem_estimate']} B" for r in recs if r["smem"] > r["smem_estimate"]]
    assert not under, "\n".join(under)


def test_every_dtype_and_feature_size_has_configs(report):
    """Each dtype the build compiles (fp32, bf16, fp16) at every D class (D = 512 stands for every
    D > 256) can launch each kernel."""
    assert report["dtypes"] == DTYPES[report["build"]].split(",")
    have = {(r["kernel"], r["dtype"], r["D"]) for r in report["records"] if r["family"] == "contrastive"}
    missing = [(k, dt, d) for k in KERNELS for dt in report["dtypes"] for d in report["contrastive_ds"]
               if (k, dt, d) not in have]
    assert not missing


def test_no_spills_at_16_bit(report):
    """bf16/fp16: no contrastive config at D <= 256 and no token/patchify variant spills registers."""
    spills = [f"{_name(r)}: {r['spill_stores']} B stored, {r['spill_loads']} B loaded ({r['regs']} regs)"
              for r in _compiled(report)
              if r["dtype"] in ("bf16", "fp16") and (r["family"] == "tokens" or r["D"] <= 256)
              and (r["spill_stores"] or r["spill_loads"])]
    assert not spills, "\n".join(spills)


def test_16_bit_contrastive_on_wgmma_without_duplicate_scores(report):
    """bf16/fp16 contrastive tiles run on Hopper's wgmma (no mma.sync fallback), and a backward
    program issues no more wgmma than its forward twin of the same tile (the scores are computed
    once per tile, not once per warpgroup; the backward adds the second matmul, so at most 2×)."""
    recs = [r for r in _compiled(report) if r["family"] == "contrastive" and r["kernel"] in KERNELS
            and r["dtype"] in ("bf16", "fp16") and r["D"] >= 64]
    assert recs
    assert not [_name(r) for r in recs if r["mma_sync"] or not r["wgmma"]]
    fwd = {(r["dtype"], r["D"], r["config"]): r["wgmma"] for r in recs if r["kernel"] == "fwd" and "flags" not in r}
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
