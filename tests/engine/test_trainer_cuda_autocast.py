"""The trainer runs with CUDA autocast's dtypes: ``engine.amp=autocast`` (the GPU's ZeRO 0 mode) under
``tests/_cuda_autocast.cuda_policy``, through DeepSpeed's ``torch_autocast``, the loop, logging and the
checkpoint, with the contrastive kernels (``method.backend=triton``, interpreted).

M-MoCo: its target projector ends in a LayerNorm, whose output CUDA autocast keeps fp32 while the online
predictor's is bf16 (the clash the GPU would have raised on); MAE: the token kernels and the pixel loss.
ZeRO 0 and ZeRO 2 (DeepSpeed's ZeRO optimizer over fp32 weights, its bf16 gradient buckets). Every
method's step alone: tests/methods/test_cuda_autocast_dtypes.py.
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import pytest
from _cuda_autocast import cuda_policy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.train_plan import tiny_overrides  # noqa: E402
from test_train_run import losses  # noqa: E402


@pytest.mark.parametrize("zero", [0, 2])
@pytest.mark.parametrize("method, backend", [("mmoco", "triton"), ("mae", "triton")])
def test_the_trainer_under_cuda_autocast(tmp_path, one_rank, method, backend, zero):
    from fastssl import train

    out = tmp_path / "run"
    argv = ["--config", str(ROOT / f"configs/imagenet/{method}.yaml"), "data.synthetic=true", "eval.enabled=false",
            f"run.output_dir={out}", "run.resume=never", "engine.progress=false", "engine.precision=bf16",
            "engine.amp=autocast", f"engine.zero_stage={zero}", f"method.backend={backend}", "optim.batch_size=4",
            "optim.max_steps=3", "optim.warmup_epochs=0", "engine.log_every_steps=1", *tiny_overrides(method)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel", once per op
        with cuda_policy():
            code = train.main(argv)
    assert code == 0
    seen = list(losses(out).values())
    assert len(seen) == 3 and all(math.isfinite(x) for x in seen)
    assert (out / "finished.json").exists()
