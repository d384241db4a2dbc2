"""engine.amp (fastssl/engine/amp.py), the trainer's MFU lever of issue 20, on CPU (autocast bf16 runs here).

- ``autocast`` at ZeRO 0: DeepSpeed steps the configured torch AdamW itself (no fp16/bf16 wrapper), the
  weights and gradients stay fp32 while the forward's matmuls run in bf16, and one engine step equals
  the bare torch step written out (autocast forward, backward, global-norm clipping, AdamW);
- ``deepspeed`` at ZeRO 0 is DeepSpeed's unfused bf16 wrapper over a bf16 model (what ran before);
- ``autocast`` at ZeRO 2 builds DeepSpeed's ZeRO optimizer over fp32 weights and steps;
- ``auto`` picks autocast only at ZeRO 0 on CUDA, so CPU runs and ZeRO 1/2 keep their DeepSpeed config;
- the loop's multi-tensor clipping has the maths of DeepSpeed's ``gradient_clipping``.
The engines are built in this process (one process group of one rank for the module). On a CUDA
machine (scripts/gpu_session.sh) the same tests build the engines on the GPU, where the optimizer is
torch's fused AdamW; the step-by-step comparison with the written-out step is exact on CPU only.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastssl.config import load_config
from fastssl.engine import amp
from fastssl.engine.ds_config import deepspeed_config
from fastssl.engine.schedule import plan_steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["data.image_size=16", "model.patch_size=4", "model.arch=test_vit", "method.head.hidden_dim=32", "method.head.out_dim=16"]


def _cfg(tmp_path, *extra: str):
    return load_config(os.path.join(ROOT, "configs/imagenet/simclr.yaml"),
                       ["data.synthetic=true", "eval.enabled=false", f"run.output_dir={tmp_path / 'run'}", "run.resume=never",
                        "engine.progress=false", "engine.precision=bf16", "optim.batch_size=4", "optim.max_steps=2",
                        "optim.warmup_epochs=0", *TINY, *extra])


class MatmulDtypes(TorchDispatchMode):
    """The input dtypes of every matmul / convolution the forward dispatches (below autocast's casts)."""

    OPS = ("mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product")

    def __init__(self):
        super().__init__()
        self.seen: dict[str, set] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name.startswith(self.OPS):
            self.seen.setdefault(name, set()).update(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
        return func(*args, **(kwargs or {}))


def test_autocast_at_zero0_steps_torch_adamw_over_fp32_weights_in_bf16(tmp_path, one_rank):
    from fastssl.engine.session import setup
    from fastssl.methods.registry import build_method

    cfg = _cfg(tmp_path, "engine.zero_stage=0", "engine.amp=autocast", "optim.clip_grad=0.01")  # a norm that clips
    s = setup(cfg)
    e = s.engine
    assert type(e.optimizer) is torch.optim.AdamW and e.optimizer is e.basic_optimizer  # no DeepSpeed wrapper
    assert bool(e.optimizer.defaults.get("fused")) == (s.device.type == "cuda")  # one multi-tensor kernel on CUDA
    assert s.autocast is torch.bfloat16 and s.dtype is torch.float32 and s.clip_grad == 0.01
    assert not e.bfloat16_enabled() and e.torch_autocast_enabled()
    params = list(s.method.parameters())
    assert params and all(p.dtype is torch.float32 for p in params)

    # The bare step written out on a copy: autocast forward, backward, clipping, torch AdamW with the
    # engine's groups and hyperparameters.
    ref = build_method(cfg).to(s.device)
    ref.load_state_dict(s.method.state_dict())
    where = {id(p): i for i, p in enumerate(params)}
    ref_params = list(ref.parameters())
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [ref_params[where[id(p)]] for p in g["params"]]}
              for g in e.optimizer.param_groups]
    ref_opt = torch.optim.AdamW(groups)

    batch = next(iter(s.loader))
    ctx = s.context()
    with MatmulDtypes() as mode:
        out = e(batch, ctx)
    assert mode.seen and all(d == {torch.bfloat16} for d in mode.seen.values()), mode.seen
    e.backward(out.loss)
    assert all(p.grad is None or p.grad.dtype is torch.float32 for p in params)
    amp.clip_gradients(s.method, s.clip_grad)  # what the loop does here, between backward and step
    before = [p.detach().clone() for p in params]
    e.step()

    with torch.autocast(s.device.type, dtype=torch.bfloat16):
        want = ref(batch, ctx)
    want.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in ref_params if p.grad is not None], 0.01)
    ref_opt.step()
    assert all(p.dtype is torch.float32 for p in params)
    if s.device.type == "cpu":  # (CUDA's attention backward accumulates in a run-dependent order)
        torch.testing.assert_close(out.loss, want.loss)
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
    assert sum(not torch.equal(a, p.detach()) for a, p in zip(before, params)) > len(params) // 2


def test_deepspeed_mode_at_zero0_is_the_bf16_wrapper(tmp_path, one_rank):
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    from fastssl.engine.session import setup

    s = setup(_cfg(tmp_path, "engine.zero_stage=0", "engine.amp=deepspeed"))
    assert isinstance(s.engine.optimizer, FP16_UnfusedOptimizer) and not s.engine.torch_autocast_enabled()
    assert all(p.dtype is torch.bfloat16 for p in s.method.parameters())
    assert s.autocast is None and s.clip_grad is None and s.dtype is torch.bfloat16


def test_autocast_at_zero2_is_the_zero_optimizer_over_fp32_weights(tmp_path, one_rank):
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    from fastssl.engine.session import setup

    s = setup(_cfg(tmp_path, "engine.zero_stage=2", "engine.amp=autocast"))
    e = s.engine
    assert isinstance(e.optimizer, DeepSpeedZeroOptimizer) and e.torch_autocast_enabled()
    assert s.clip_grad is None  # ZeRO clips over its flat partitions itself
    before = [p.detach().clone() for p in s.method.parameters()]
    out = e(next(iter(s.loader)), s.context())
    e.backward(out.loss)
    e.step()
    after = list(s.method.parameters())
    assert all(p.dtype is torch.float32 for p in after)
    assert sum(not torch.equal(a, p.detach()) for a, p in zip(before, after)) > len(before) // 2


def test_auto_is_autocast_at_zero0_on_cuda_only(tmp_path, monkeypatch):
    plan = plan_steps(images_per_epoch=1000, micro_batch=4, grad_accum=1, world_size=1, epochs=1, max_steps=None,
                      warmup_epochs=0, base_lr=1e-3)
    for cuda, zero, want in ((True, 0, "autocast"), (True, 1, "deepspeed"), (True, 2, "deepspeed"), (False, 0, "deepspeed")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        cfg = _cfg(tmp_path, f"engine.zero_stage={zero}")
        assert amp.resolve_amp(cfg.engine) == want
        ds = deepspeed_config(cfg, plan, 1)
        if want == "autocast":
            assert not ds["bf16"]["enabled"] and ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
            # the loop clips, DeepSpeed must not (0, said: absent means 1.0 in DeepSpeed 0.19); fp32 weights
            assert ds["gradient_clipping"] == 0.0 and ds["data_types"] == {}
            assert amp.loop_clips(cfg.engine, cfg.optim.clip_grad) == cfg.optim.clip_grad
        else:  # what every CPU run and every ZeRO 1/2 run had before engine.amp
            assert ds["bf16"]["enabled"] and "torch_autocast" not in ds and ds["data_types"] == {"buffer_dtype": "bf16"}
            assert ds["gradient_clipping"] == cfg.optim.clip_grad
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert amp.resolve_amp(_cfg(tmp_path, "engine.precision=fp32").engine) == "none"
    ds = deepspeed_config(_cfg(tmp_path, "engine.zero_stage=2", "engine.amp=autocast"), plan, 1)
    assert ds["torch_autocast"]["enabled"] and ds["gradient_clipping"] == 3.0  # ZeRO 2: DeepSpeed clips
    with pytest.raises(Exception, match="engine.amp=autocast runs bf16 only"):
        _cfg(tmp_path, "engine.precision=fp16", "engine.zero_stage=1", "engine.amp=autocast")


@pytest.mark.parametrize("extra, want", [
    (("engine.precision=fp32", "optim.clip_grad=null"), None),  # nothing clips
    (("engine.amp=autocast", "optim.clip_grad=1000000"), 1e6),  # the loop clips (here: not at all), DeepSpeed not again
    (("engine.precision=fp32", "optim.clip_grad=0.5"), 0.5),  # DeepSpeed clips at the configured norm
])
def test_the_optimizer_steps_with_the_configured_clipping(tmp_path, one_rank, extra, want):
    """The gradients the optimizer steps with have norm min(raw, optim.clip_grad) at ZeRO 0, whoever clips.
    DeepSpeed 0.19 clips at 1.0 when its config has no ``gradient_clipping``: before the config said 0, a
    run with clip_grad=null was clipped at 1.0, and an autocast run a second time at 1.0 after the loop."""
    from fastssl.engine.session import setup

    def norm(params):
        return torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params if p.grad is not None])).item()

    s = setup(_cfg(tmp_path, "engine.zero_stage=0", *extra))
    seen = []
    s.engine.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append(norm([p for g in opt.param_groups for p in g["params"]])))
    torch.manual_seed(1)
    out = s.engine(next(iter(s.loader)), s.context())
    s.engine.backward(out.loss * 1000)  # a gradient norm far above 1
    raw = norm(s.method.parameters())
    assert raw > 10
    if s.clip_grad is not None:  # what the loop does between backward and step
        amp.clip_gradients(s.method, s.clip_grad)
    s.engine.step()
    assert len(seen) == 1
    assert seen[0] == pytest.approx(raw if want is None or want > raw else want, rel=1e-4)


def test_loop_clipping_has_deepspeeds_maths(one_rank):
    """``amp.clip_gradients`` (torch's multi-tensor clip) against DeepSpeed's ``clip_grad_norm_``."""
    from deepspeed.runtime.utils import clip_grad_norm_

    from fastssl.engine.distributed import init_distributed

    init_distributed()
    g = torch.Generator().manual_seed(0)
    a, b = torch.nn.Linear(7, 5), torch.nn.Linear(7, 5)
    b.load_state_dict(a.state_dict())
    for max_norm in (0.1, 1e3):  # clips; leaves the gradients alone
        for p, q in zip(a.parameters(), b.parameters()):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        got = amp.clip_gradients(a, max_norm)
        want = clip_grad_norm_(list(b.parameters()), max_norm)
        torch.testing.assert_close(got.reshape(()), want.reshape(()))
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p.grad, q.grad)


def test_evaluation_features_of_an_fp32_encoder_run_in_bf16():
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    wrapped = amp.AutocastForward(enc, "cpu", torch.bfloat16)
    wrapped.eval()
    assert not enc.training  # extract() switches the wrapper; the encoder follows
    with MatmulDtypes() as mode:
        y = wrapped(torch.randn(2, 3, 2, 2))
    assert y.dtype is torch.bfloat16 and mode.seen["addmm"] == {torch.bfloat16}
    assert enc[1].weight.dtype is torch.float32
