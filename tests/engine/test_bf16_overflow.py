"""DeepSpeed's bf16 does not skip steps on non-finite gradients (``bf16.check_grad_overflow: false``).

With the check on (DeepSpeed's default) a step whose gradients hold an inf or a NaN is skipped, and
the run goes on: a finite loss over non-finite gradients "trains" without ever updating, silently.
With it off the gradients reach the weights, the next loss is non-finite and the loop stops the run
with its one-line message, as it does under autocast. The check also cost ~13 kernel ops per weight
tensor and a host read per step at ZeRO 1/2 (``bench/train_host_ops.py``). Where DeepSpeed skips
anyway (its ZeRO 0 bf16 wrapper, or the check turned back on), the loop sees its skipped-step counter
move and stops the run. The run tests fail on the previous main (the runs finish, every step skipped).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.train_plan import tiny_overrides  # noqa: E402


def _argv(tmp_path, *extra):
    return ["--config", str(ROOT / "configs/imagenet/simclr.yaml"), "data.synthetic=true", "eval.enabled=false",
            f"run.output_dir={tmp_path / 'run'}", "run.resume=never", "engine.progress=false", "engine.precision=bf16",
            "engine.amp=deepspeed", "optim.batch_size=4", "optim.max_steps=6", "optim.warmup_epochs=0",
            "engine.log_every_steps=3", "engine.ckpt_every_steps=100", *tiny_overrides("simclr"), *extra]


def test_the_derived_json_turns_the_skip_off_and_a_user_can_turn_it_on(tmp_path):
    from fastssl.config import load_config
    from fastssl.engine.ds_config import deepspeed_config
    from fastssl.engine.schedule import plan_steps

    plan = plan_steps(images_per_epoch=64, micro_batch=4, grad_accum=1, world_size=1, epochs=1, max_steps=6,
                      warmup_epochs=0, base_lr=1e-3)
    argv = _argv(tmp_path)
    cfg = load_config(argv[1], argv[2:])
    assert deepspeed_config(cfg, plan, 1)["bf16"] == {"enabled": True, "check_grad_overflow": False}
    cfg = load_config(argv[1], [*argv[2:], "deepspeed.bf16.check_grad_overflow=true"])
    assert deepspeed_config(cfg, plan, 1)["bf16"]["check_grad_overflow"] is True
    cfg = load_config(argv[1], [*argv[2:], "engine.precision=fp32"])
    assert deepspeed_config(cfg, plan, 1)["bf16"] == {"enabled": False}


@pytest.mark.parametrize("extra, line", [
    (("engine.zero_stage=1",), "non-finite loss"),  # no check: NaN reaches the weights, then the loss
    (("engine.zero_stage=1", "deepspeed.bf16.check_grad_overflow=true"), "non-finite gradients"),  # DeepSpeed skips
    (("engine.zero_stage=0",), "non-finite gradients"),  # the ZeRO 0 bf16 wrapper always skips
], ids=["zero1", "zero1-check-on", "zero0"])
def test_non_finite_gradients_under_a_finite_loss_stop_the_run(tmp_path, one_rank, monkeypatch, capsys, extra, line):
    """A finite loss over NaN gradients, DeepSpeed's bf16: the run stops with one line, whether DeepSpeed
    lets the NaN through (fastssl's JSON at ZeRO 1/2) or skips the update (its default, and its ZeRO 0
    wrapper always). Before, every such run finished with exit code 0, each step skipped."""
    from fastssl import train
    from fastssl.methods.simclr import SimCLR

    forward = SimCLR.forward

    def nan_gradients(self, batch, ctx):
        out = forward(self, batch, ctx)
        p = next(self.parameters())
        # sqrt(0) = 0 adds nothing to the loss; its gradient, inf · 0, puts NaN into p's gradient
        out.loss = out.loss + (p.float() * 0).abs().sqrt().sum() * 0
        return out

    monkeypatch.setattr(SimCLR, "forward", nan_gradients)
    code = train.main(_argv(tmp_path, *extra))
    err = capsys.readouterr().err
    assert code == train.EXIT_STOPPED, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert line in last and "last good checkpoint: none" in last, last
