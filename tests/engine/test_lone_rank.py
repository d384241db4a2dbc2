"""fastssl/engine/lone_rank.py: one data-parallel rank at ZeRO 0 skips DeepSpeed's gradient all-reduce.

The skip must change nothing but the host work: one engine step with it gives bit for bit the
gradients and weights of the step through DeepSpeed's all-reduce, on the one-rank group of this
process. ZeRO 1/2 (their optimizer's reduction fills its partitions) and a user's pre-divide factor
keep the all-reduce; two ranks keep it too (tests/engine/test_distributed*.py train on two gloo ranks).
"""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastssl.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["data.image_size=16", "model.patch_size=4", "model.arch=test_vit", "method.decoder.embed_dim=32",
        "method.decoder.depth=1", "method.decoder.num_heads=2"]


def _cfg(tmp_path, name, *extra):
    return load_config(os.path.join(ROOT, "configs/imagenet/mae.yaml"),
                       ["data.synthetic=true", "eval.enabled=false", f"run.output_dir={tmp_path / name}", "run.resume=never",
                        "engine.progress=false", "engine.precision=fp32", "optim.batch_size=4", "optim.max_steps=2",
                        "optim.warmup_epochs=0", *TINY, *extra])


class Copies(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func.overloadpacket.__name__ == "copy_"
        return func(*args, **(kwargs or {}))


def _step(s):
    torch.manual_seed(1)
    out = s.engine(next(iter(s.loader)), s.context())
    with Copies() as copies:
        s.engine.backward(out.loss)
    grads = [p.grad.detach().clone() for p in s.method.parameters() if p.grad is not None]
    s.engine.step()
    return out.loss.detach(), grads, [p.detach().clone() for p in s.method.parameters()], copies.n


@pytest.mark.parametrize("extra, skips", [(("engine.zero_stage=0",), True), (("engine.zero_stage=2",), False),
                                          (("engine.zero_stage=0", "deepspeed.gradient_predivide_factor=2.0"), False)])
def test_which_runs_skip_it(tmp_path, one_rank, extra, skips):
    from fastssl.engine.session import setup

    s = setup(_cfg(tmp_path, "run", *extra))
    assert s.engine.enable_backward_allreduce is (not skips)


def test_the_step_without_it_is_the_step_with_it(tmp_path, one_rank):
    from fastssl.engine import lone_rank
    from fastssl.engine.session import setup

    runs = {}
    for skip in (True, False):
        torch.manual_seed(0)
        s = setup(_cfg(tmp_path, f"run{skip}", "engine.zero_stage=0"))
        if not skip:
            s.engine.enable_backward_allreduce = True  # DeepSpeed's own path, as before
        else:
            assert not s.engine.enable_backward_allreduce
        runs[skip] = _step(s)
    (loss_a, grads_a, weights_a, copies_a), (loss_b, grads_b, weights_b, copies_b) = runs[True], runs[False]
    assert torch.equal(loss_a, loss_b)
    assert len(grads_a) == len(grads_b) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))
    # DeepSpeed's reduction copies every gradient into its bucket and back: one rank saves that work
    assert copies_b - copies_a >= len(grads_a)
    assert lone_rank.skip_lone_allreduce(s.engine, 0, {}) is True


def test_the_zero_hint_is_for_one_gpu_at_zero_1_or_2_only():
    from fastssl.engine.lone_rank import zero_hint

    for stage in (1, 2):
        line = zero_hint(stage, 1, cuda=True)
        assert line is not None and f"ZeRO {stage}" in line and "engine.zero_stage=0" in line and "\n" not in line
    assert zero_hint(0, 1, cuda=True) is None  # already the short step
    assert zero_hint(1, 8, cuda=True) is None  # eight ranks: ZeRO partitions
    assert zero_hint(1, 1, cuda=False) is None  # CPU: host work is not what bounds a step
