"""bench/train.py --smoke: a trainer row runs end to end (CLI on synthetic data, FLOP count, bare step)
and writes its JSON + PNG with images/s, FLOPs, MFU and the trainer's overhead; a row past its
time cap is recorded as an error and the sweep goes on."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(out_dir: Path, *extra: str) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train.py"), "--smoke", "--variants", "eager",
                           "--out-dir", str(out_dir), *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    jsons = list(out_dir.glob("train-*-smoke.json"))
    assert len(jsons) == 1 and jsons[0].with_suffix(".png").is_file()
    return json.loads(jsons[0].read_text()), done.stdout


def test_a_trainer_row_measures_images_flops_mfu_and_overhead(tmp_path):
    doc, out = _run(tmp_path, "--methods", "simclr", "--full-finish")  # the CLI's own end: checkpoint, export
    assert doc["smoke"] and len(doc["records"]) == 1
    r = doc["records"][0]
    assert r["error"] is None, r["error"]
    x = r["extra"]
    assert x["exit_code"] == 0 and x["checkpoints"] == ["step3"] and x["encoder_exported"]
    assert x["trainer_images_per_s"] > 0 and x["bare_images_per_s"] > 0 and x["flops_per_step"] > 0
    assert abs(sum(x["flops_per_op"].values()) - x["flops_per_step"]) < 1e-6 * x["flops_per_step"]
    assert "mm" in x["flops_per_op"] or "addmm" in x["flops_per_op"]
    assert 0 < x["mfu_pct"] and "trainer_overhead_pct" in x
    assert "data.synthetic=true" in x["command"] and "simclr" in out


def test_a_row_past_its_cap_is_an_error_and_the_sweep_goes_on(tmp_path):
    """Rows share a process; the one past its cap is killed and a fresh process takes the next."""
    doc, _ = _run(tmp_path, "--methods", "simclr,byol", "--row-timeout", "1")
    assert [r["case"]["method"] for r in doc["records"]] == ["simclr", "byol"]
    assert all("time cap" in (r["error"] or "") for r in doc["records"])


def test_rows_share_a_process_and_end_lean(tmp_path):
    doc, _ = _run(tmp_path, "--methods", "simclr,mocov2", "--no-bare")
    assert [r["case"]["method"] for r in doc["records"]] == ["simclr", "mocov2"]
    for r in doc["records"]:
        x = r["extra"]
        assert r["error"] is None and x["trainer_images_per_s"] > 0 and x["flops_per_step"] > 0
        assert x["checkpoints"] == [] and not x["encoder_exported"] and "bare_images_per_s" not in x
    assert doc["records"][0]["extra"]["ceilings"] == doc["records"][1]["extra"]["ceilings"]  # one reference
