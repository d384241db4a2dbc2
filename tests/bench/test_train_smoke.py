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


def test_amp_rows_run_the_loop_in_bf16_both_ways(tmp_path):
    """engine.amp through the trainer (bf16 on CPU): autocast at ZeRO 0 steps torch's AdamW over fp32
    weights and the loop clips; deepspeed at ZeRO 0 is DeepSpeed's bf16 wrapper; both train."""
    doc, out = _run(tmp_path, "--methods", "simclr", "--precision", "bf16", "--amp", "autocast,deepspeed", "--no-bare")
    rows = {r["provider"]: r for r in doc["records"]}
    assert list(rows) == ["eager z0 autocast", "eager z0 ds-bf16"], list(rows)
    a, d = rows["eager z0 autocast"], rows["eager z0 ds-bf16"]
    assert a["error"] is None and d["error"] is None, (a["error"], d["error"])
    assert a["case"]["amp"] == "autocast" and a["case"]["precision"] == "bf16" and "engine.amp=autocast" in a["extra"]["command"]
    assert a["extra"]["optimizer"] == "AdamW" and a["extra"]["weights_dtype"] == "float32"
    assert a["extra"]["autocast"] == "bfloat16" and a["extra"]["loop_clips"] == 3.0
    assert d["extra"]["optimizer"] == "FP16_UnfusedOptimizer" and d["extra"]["weights_dtype"] == "bfloat16"
    assert d["extra"]["autocast"] is None and d["extra"]["loop_clips"] is None
    assert a["extra"]["trainer_images_per_s"] > 0 and d["extra"]["trainer_images_per_s"] > 0
    assert a["extra"]["flops_per_step"] == d["extra"]["flops_per_step"]  # counted once per shape


def test_quick_plan_puts_the_amp_lever_first():
    """The GPU plan of --quick (printed without running): SimCLR/DCL autocast vs DeepSpeed bf16 at ZeRO 0,
    ZeRO 2, compile, then every other method at ZeRO 0 with autocast, the ResNets' NCHW rows, then ZeRO 2
    and compile rows."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train.py"), "--quick", "--plan"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    names = [line.split(". ", 1)[1].split("  (")[0] for line in done.stdout.splitlines() if ". " in line]
    assert names[:6] == ["simclr eager z0 autocast", "simclr eager z0 ds-bf16", "simclr eager z2 ds-bf16",
                         "simclr eager z2 autocast", "simclr compile z0 autocast", "simclr compile z2 ds-bf16"]
    # every other method at ZeRO 0 with autocast; each ResNet's row followed by the same row in NCHW
    # (the channels-last lever's before / after); MAE's ZeRO 2 pair (ds-bf16, autocast) after its row
    assert names[6:9] == ["mae eager z0 autocast", "mae eager z2 ds-bf16", "mae eager z2 autocast"]
    others = names[6:7] + names[9:20]
    nchw = [n for n in others if n.endswith(" nchw")]
    assert nchw == ["mocov2 eager z0 autocast nchw", "swav eager z0 autocast nchw"]
    assert all(others[others.index(n) - 1] == n[:-len(" nchw")] for n in nchw)
    plain = [n for n in others if n not in nchw]
    assert all(n.endswith(" eager z0 autocast") for n in plain) and len({n.split()[0] for n in plain}) == 10
    assert "simclr" not in {n.split()[0] for n in others}
    assert all(" z2 " in n or " compile " in n for n in names[20:]) and len(names) == 49


def test_peak_memory_is_read_on_cuda_only_and_in_gib(monkeypatch):
    """The row's memory columns: nothing off CUDA (no allocator statistics there), GiB of the device's
    peak allocated / reserved bytes on it (the allocator's calls stand in for a GPU here)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from bench.train_measure import peak_memory

    assert peak_memory("trainer", torch.device("cpu")) == {}
    asked = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: asked.append(d) or 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: asked.append(d) or 5 * 2**29)
    dev = torch.device("cuda", 0)
    assert peak_memory("bare", dev) == {"bare_peak_allocated_gib": 3.0, "bare_peak_reserved_gib": 2.5}
    assert asked == [dev, dev]
