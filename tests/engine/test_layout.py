"""engine.channels_last (fastssl/engine/layout.py): ResNet encoders in NHWC layout, one of issue 20's levers.

On CPU (this machine) the lever is off by default; the tests turn it on explicitly and check that it
changes the layout and nothing else: the same loss and the same update as the NCHW run (fp32,
within the rounding of another convolution algorithm), gradients and optimizer state in the weights'
layout, a resume across layouts, the exported encoder, and the config's one-line refusals (a ViT;
ZeRO 1/2 and DeepSpeed's bf16 wrapper, where DeepSpeed's own handling of the weights does not allow it). Its speed is a GPU figure (``bench/train.py``'s ``nchw`` rows), pending a GPU session.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch

from fastssl.config import ConfigError, load_config
from fastssl.engine import layout
from fastssl.models.resnet import ResNetTaps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CL = torch.channels_last


def _cfg(tmp_path, *extra: str, name: str = "run"):
    return load_config(os.path.join(ROOT, "configs/imagenet/mocov2.yaml"), [
        "data.synthetic=true", "eval.enabled=false", f"run.output_dir={tmp_path / name}", "run.resume=never",
        "engine.progress=false", "engine.precision=fp32", "engine.zero_stage=0", "optim.batch_size=4",
        "optim.max_steps=2", "optim.warmup_epochs=0", "data.image_size=32", "model.arch=test_resnet",
        "method.head.hidden_dim=32", "method.head.out_dim=16", "method.queue_size=64", *extra])


def _convs(module):
    """Convolution weights with a spatial kernel (a 1×1 weight is contiguous in both layouts)."""
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]


def test_auto_is_on_for_a_resnet_on_cuda_only(tmp_path):
    res = _cfg(tmp_path)
    vit = load_config(os.path.join(ROOT, "configs/imagenet/simclr.yaml"), ["data.synthetic=true", "eval.enabled=false"])
    assert layout.resolve(res.engine, res.model.arch, cuda=True) is True
    assert layout.resolve(res.engine, res.model.arch, cuda=False) is False
    assert layout.resolve(vit.engine, vit.model.arch, cuda=True) is False
    off = _cfg(tmp_path, "engine.channels_last=false")
    assert layout.resolve(off.engine, off.model.arch, cuda=True) is False
    on = _cfg(tmp_path, "engine.channels_last=true")
    assert layout.resolve(on.engine, on.model.arch, cuda=False) is True


def test_a_vit_refuses_it_in_one_line():
    with pytest.raises(ConfigError) as err:
        load_config(os.path.join(ROOT, "configs/imagenet/simclr.yaml"),
                    ["data.synthetic=true", "eval.enabled=false", "engine.channels_last=true"])
    assert "engine.channels_last=true applies to ResNet encoders" in str(err.value) and "\n" not in str(err.value)


def test_the_encoder_takes_its_weights_layout_and_computes_the_same():
    torch.manual_seed(0)
    ref = ResNetTaps.from_timm("test_resnet")
    enc = ResNetTaps.from_timm("test_resnet")
    enc.load_state_dict(ref.state_dict())
    layout.apply(enc)
    assert all(w.is_contiguous(memory_format=CL) for w in _convs(enc))
    x = torch.randn(3, 3, 32, 32)
    seen = []
    enc.stage_hook = enc.layer1.register_forward_hook(lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=CL)))
    torch.testing.assert_close(enc(x), ref(x), rtol=1e-4, atol=1e-5)
    assert seen == [True]  # NHWC from the stem on
    enc(x).square().sum().backward()
    assert all(w.grad.is_contiguous(memory_format=CL) for w in _convs(enc))


@pytest.mark.parametrize("extra, why", [
    (("engine.zero_stage=2",), "engine.zero_stage=2"),
    (("engine.precision=bf16", "engine.amp=deepspeed"), "engine.amp=deepspeed"),
])
def test_where_it_cannot_apply_true_is_refused_and_auto_is_off(tmp_path, extra, why):
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, *extra, "engine.channels_last=true")
    assert "engine.channels_last=true needs ZeRO 0" in str(err.value) and why in str(err.value)
    assert "\n" not in str(err.value)
    auto = _cfg(tmp_path, *extra)
    assert layout.resolve(auto.engine, auto.model.arch, cuda=True) is False


def test_bf16_through_deepspeeds_wrapper_on_this_machine_is_refused_at_set_up(tmp_path, one_rank):
    """engine.amp=auto with bf16 on CPU resolves to DeepSpeed's wrapper: known only on the machine."""
    from fastssl.engine.session import setup

    cfg = _cfg(tmp_path, "engine.precision=bf16", "engine.channels_last=true", name="bf16auto")
    if torch.cuda.is_available():
        pytest.skip("on CUDA engine.amp=auto is autocast at ZeRO 0")
    with pytest.raises(ConfigError) as err:
        setup(cfg)
    assert "bf16 goes through deepspeed" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def exact_fp32():
    """fp32 convolutions and matmuls in fp32 on CUDA (TF32 would differ by its own rounding between layouts)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_one_engine_step_is_the_nchw_step(tmp_path, one_rank, exact_fp32):
    """On CPU, and on CUDA in the GPU session (cuDNN's NHWC kernels, torch's fused AdamW over NHWC weights)."""
    from fastssl.engine.session import setup

    zero, runs = 0, {}
    for on in (False, True):
        torch.manual_seed(0)
        s = setup(_cfg(tmp_path, f"engine.channels_last={str(on).lower()}", name=f"run{zero}{on}"))
        convs = _convs(s.method)
        assert convs and all(w.is_contiguous(memory_format=CL) == on for w in convs)
        torch.manual_seed(1)
        batch = next(iter(s.loader))
        out = s.engine(batch, s.context())
        s.engine.backward(out.loss)
        grads = [p.grad.detach().clone() for p in s.method.parameters() if p.grad is not None]
        lr = s.engine.optimizer.param_groups[0]["lr"]  # this step's (the scheduler moves it after)
        s.engine.step()
        if on:
            state = s.engine.optimizer.state
            moments = [state[w]["exp_avg"] for w in convs if w in state]
            assert moments and all(m.stride() == w.stride() for m, w in zip(moments, convs))
        runs[on] = (out.loss.detach(), grads, [p.detach().clone() for p in s.method.parameters()])
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=1e-4, atol=1e-5)
    assert len(runs[True][1]) == len(runs[False][1]) > 0
    for a, b in zip(runs[True][1], runs[False][1]):  # another convolution algorithm: rounding only
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max()) + 1e-8)
    # AdamW's first update is lr·g/(|g| + eps): a gradient within rounding of zero may flip its sign,
    # so the weights agree to within 2·lr
    for a, b in zip(runs[True][2], runs[False][2]):
        torch.testing.assert_close(a, b, rtol=0, atol=2.01 * lr)


def test_optimizer_state_of_the_other_layout_takes_the_weights_layout():
    """A checkpoint written NCHW, resumed NHWC: after ``relayout_optimizer_state`` every moment has its
    weight's strides and the same values, and the next step is the NCHW step."""
    torch.manual_seed(0)
    a = torch.nn.Conv2d(3, 8, 3)
    b = torch.nn.Conv2d(3, 8, 3)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = torch.optim.AdamW(a.parameters(), lr=0.1), torch.optim.AdamW(b.parameters(), lr=0.1)
    x = torch.randn(2, 3, 9, 9)
    a(x).sum().backward()
    opt_a.step()
    b.load_state_dict(a.state_dict())
    layout.apply(b)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a checkpoint: NCHW moments, NHWC weight
    assert opt_b.state[b.weight]["exp_avg"].stride() != b.weight.stride()
    assert layout.relayout_optimizer_state(opt_b) == 2  # exp_avg and exp_avg_sq of the 4-D weight
    for key in ("exp_avg", "exp_avg_sq"):
        m = opt_b.state[b.weight][key]
        assert m.stride() == b.weight.stride()
        torch.testing.assert_close(m, opt_a.state[a.weight][key], rtol=0, atol=0)
    for net, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()
    torch.testing.assert_close(b.weight, a.weight, rtol=1e-5, atol=1e-6)


def test_the_exported_encoder_loads_into_a_plain_timm_model(tmp_path):
    from fastssl.eval.export import export_spec, load_timm_encoder, save_encoder

    torch.manual_seed(0)
    enc = layout.apply(ResNetTaps.from_timm("test_resnet"))
    path = save_encoder(enc.state_dict(), tmp_path / "encoder.pt", export_spec(enc))
    timm_model = load_timm_encoder(path).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(timm_model(x), enc.eval()(x), rtol=1e-4, atol=1e-5)
