"""ZeRO 3: the methods that train on it give ZeRO 0's losses; the others are refused at config time.

ZeRO 3 gathers a weight only while its own module runs forward or backward; weights below
``stage3_param_persistence_threshold`` (1e5 elements) stay whole, so the tiny test models here run with
the threshold at 0: every weight partitioned, as ViT-B's and ResNet-50's large ones are. Under that,
before the refusal, BYOL and MoCo v2 / v3 raised in their first EMA update, M-MoCo, M-BYOL, MAE, CAN and
DAC in their first backward (the patch views' embedding), and SwAV trained on prototypes its in-place
normalisation never reached (other losses than ZeRO 0 from step 1 with Accel). fp32, one rank, in process.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.train_plan import tiny_overrides  # noqa: E402
from test_train_run import losses  # noqa: E402

from fastssl.config import ConfigError, load_config  # noqa: E402
from fastssl.config_pairs import ZERO3_BLOCKERS  # noqa: E402
from fastssl.methods.registry import method_names  # noqa: E402

EVERY_WEIGHT_PARTITIONED = "deepspeed.zero_optimization.stage3_param_persistence_threshold=0"


def _run(tmp_path, config: str, overrides: list[str], zero: int) -> list[float]:
    from fastssl import train

    out = tmp_path / f"zero{zero}"
    argv = ["--config", str(ROOT / config), "data.synthetic=true", "eval.enabled=false", f"run.output_dir={out}",
            "run.resume=never", "engine.progress=false", "engine.precision=fp32", f"engine.zero_stage={zero}",
            "optim.batch_size=4", "optim.max_steps=3", "optim.warmup_epochs=0", "engine.log_every_steps=1",
            "optim.base_lr=0.5", *overrides, *([EVERY_WEIGHT_PARTITIONED] if zero == 3 else [])]
    assert train.main(argv) == 0
    return list(losses(out).values())


@pytest.mark.parametrize("config, overrides", [
    ("configs/imagenet/simclr.yaml", tiny_overrides("simclr")),
    ("configs/imagenet/simsiam.yaml", tiny_overrides("simsiam")),
    ("configs/fmnist/simclr_accel.yaml", ["data.image_size=16", "model.arch=test_resnet", "method.accel.partial_backprop=false"]),
], ids=["simclr", "simsiam", "simclr_accel_hard_pairs"])  # (partial back-prop needs ZeRO 0: test_accel_optimizer.py)
def test_zero3_with_every_weight_partitioned_trains_as_zero0(tmp_path, one_rank, config, overrides):
    zero0, zero3 = _run(tmp_path, config, overrides, 0), _run(tmp_path, config, overrides, 3)
    assert len(zero0) == 3
    assert zero3 == pytest.approx(zero0, rel=1e-4, abs=1e-5)


def test_every_other_method_is_refused_in_one_line(tmp_path):
    allowed = {"simclr", "simsiam"}
    assert set(ZERO3_BLOCKERS) == set(method_names()) - allowed  # a new method is placed on one side
    for name in sorted(ZERO3_BLOCKERS):
        config = str(ROOT / f"configs/imagenet/{name}.yaml")
        base = ["data.synthetic=true", "eval.enabled=false", "optim.batch_size=4", *tiny_overrides(name)]
        with pytest.raises(ConfigError) as err:
            load_config(config, [*base, "engine.zero_stage=3"])
        line = str(err.value)
        assert len(line.splitlines()) == 1 and "engine.zero_stage=3 keeps every weight partitioned" in line, line
        assert f"method {name} reads weights there ({ZERO3_BLOCKERS[name]})" in line and "engine.zero_stage=2" in line
        load_config(config, [*base, "engine.zero_stage=2"])  # ZeRO 2 stays open
