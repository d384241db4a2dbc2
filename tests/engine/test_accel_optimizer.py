"""Accel's partial back-prop through the trainer: only the drawn stages move, and the optimizer modes that
would move every stage are refused at set-up in one line.

A step back-props from one stage's loss; the later stages get no gradient and must stay as they are
(``tests/methods/test_accel.py`` with torch's AdamW). Through DeepSpeed that holds where it steps the
model's own weights with torch's optimizer (ZeRO 0 in fp32 or under autocast). Its ZeRO 1 / 2 optimizer
and its bf16 wrapper give a weight without a gradient a zero one, and AdamW's momentum and weight decay
then move all four stages every step: before the refusal such runs trained another algorithm unsaid.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BASE = ["data.synthetic=true", "eval.enabled=false", "run.resume=never", "engine.progress=false", "optim.batch_size=4",
        "optim.max_steps=8", "optim.warmup_epochs=0", "data.image_size=16", "model.arch=test_resnet", "optim.base_lr=0.5"]


def test_through_the_engine_only_the_drawn_stages_move(tmp_path, one_rank):
    from fastssl.config import load_config
    from fastssl.engine.session import setup

    cfg = load_config(str(ROOT / "configs/fmnist/simclr_accel.yaml"), [*BASE, f"run.output_dir={tmp_path / 'run'}",
                                                                        "engine.precision=fp32", "engine.zero_stage=0"])
    s = setup(cfg)
    batches, drawn = iter(s.loader), set()
    for step in range(6):
        before = {n: p.detach().clone() for n, p in s.method.named_parameters() if n.startswith("encoder.layer")}
        out = s.engine(next(batches), s.context(step))
        s.engine.backward(out.loss)
        s.engine.step()
        stage = int(out.metrics["accel_stage"])
        drawn.add(stage)
        moved = {int(n[len("encoder.layer")]) for n, p in s.method.named_parameters() if n in before and not torch.equal(p, before[n])}
        assert moved == set(range(1, stage + 1)), (step, stage, moved)
    assert len(drawn) > 1  # (several stages drawn in these steps: the check saw more than one case)


@pytest.mark.parametrize("extra, which", [
    (["engine.zero_stage=2"], "with engine.zero_stage=2"),
    (["engine.zero_stage=1"], "with engine.zero_stage=1"),
    (["engine.precision=bf16"], "with DeepSpeed's bf16 wrapper (engine.amp resolves to deepspeed)"),  # amp=auto on CPU
], ids=["zero2", "zero1", "ds-bf16"])
def test_modes_that_move_every_stage_are_one_line(tmp_path, one_rank, capsys, extra, which):
    from fastssl import train

    code = train.main(["--config", str(ROOT / "configs/fmnist/simclr_accel.yaml"), *BASE, f"run.output_dir={tmp_path / 'run'}", *extra])
    err = capsys.readouterr().err.strip()
    assert code == train.EXIT_CONFIG and "Traceback" not in err, err[-2000:]
    last = err.splitlines()[-1]
    assert last.startswith("fastssl: config error: method.accel.partial_backprop needs an optimizer that skips") and which in last, last
    assert not (tmp_path / "run").exists()
