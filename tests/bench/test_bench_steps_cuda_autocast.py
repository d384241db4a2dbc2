"""The GPU benches' training steps run under CUDA's bf16 autocast dtypes (``tests/_cuda_autocast``).

On CPU these benches run fp32 (autocast only on CUDA), so their smoke tests never see the dtypes the GPU
session's rows have: the MAE / CAN / DAC steps of ``bench/throughput.py --mae`` with their eager twins
(``bench/eager.py``, written apart from the methods), the M-MoCo / M-BYOL packed and per-chunk steps of
``bench/masked_step.py``, and the SimCLR step of ``bench/throughput.py``. Each step runs once here with
CUDA's casts (smoke shapes) and must give a finite loss; both twins of a step must agree (same weights,
same inputs), as the benches check on the GPU.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from _cuda_autocast import cuda_policy

from bench import masked_image, masked_step, throughput
from fastssl.data.batch import Batch
from fastssl.methods.base import StepContext

CPU = torch.device("cpu")


def _under_cuda_autocast(step) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel", once per op
        with cuda_policy():
            loss = step().detach().float().item()
    assert math.isfinite(loss)
    return loss


@pytest.mark.parametrize("name", sorted(masked_image.METHODS))
def test_masked_image_steps(name):
    case = masked_image.SMOKE
    losses = {}
    for eager in (False, True):
        model, opt = masked_image.build(name, case, eager, CPU)
        batch = masked_image.make_batch(model, case, CPU)
        losses[eager] = _under_cuda_autocast(masked_image.make_step(model, opt, batch, True, CPU))
    assert losses[False] == pytest.approx(losses[True], rel=5e-2, abs=5e-2)  # bf16 matmuls in both


@pytest.mark.parametrize("name", ["mmoco", "mbyol"])
def test_masked_chunk_steps(name):
    (case,), _, _ = masked_step.SMOKE
    method = masked_step.build(name, case, 4, 4, CPU)
    torch.manual_seed(1)
    views = torch.randn(2, case.batch, 3, case.img, case.img)
    index = torch.arange(case.batch)
    batch, ctx = Batch({"views": views}, index, index), StepContext(step=0, steps_per_epoch=1, total_steps=1, seed=0)
    eager_fwd, _ = masked_step.make_eager(method)

    def step(fwd):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = fwd()
            loss.backward()
            return loss
        return run

    packed = _under_cuda_autocast(step(lambda: method(batch, ctx).loss))
    eager = _under_cuda_autocast(step(lambda: eager_fwd(batch, ctx)))
    assert packed == pytest.approx(eager, rel=5e-2, abs=5e-2)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_simclr_model_step(backend):
    model, opt = throughput.build("test_vit", 16, 4, "dcl", backend, CPU)
    torch.manual_seed(2)
    v1, v2 = torch.randn(2, 8, 3, 16, 16).unbind(0)
    _under_cuda_autocast(throughput.make_step(model, opt, v1, v2, True))
