"""The method contract for every registered method: config ↔ registry, parameter groups, crops, a
training step on a tiny ViT, and EMA targets that move as the fp32 formula says in bf16."""
from __future__ import annotations

import pytest
import torch
from _helpers import layout_only_folder

from fastssl.config import TrainConfig
from fastssl.data.batch import Batch
from fastssl.data.crops import check_crops
from fastssl.engine.params import optimizer_groups
from fastssl.models.ema import cosine_momentum
from fastssl.methods.base import AfterStep, MethodModule, StepContext
from fastssl.methods.registry import METHODS, build_method, method_names
from fastssl.models import PackedViT

SMALL_HEADS = {
    "simclr": {"head": {"hidden_dim": 32, "out_dim": 16}},
    "byol": {"projector": {"hidden_dim": 32, "out_dim": 16}, "predictor": {"hidden_dim": 32, "out_dim": 16}},
    "simsiam": {"projector": {"hidden_dim": 32, "out_dim": 16}, "predictor": {"hidden_dim": 8, "out_dim": 16}},
    "mocov3": {"projector": {"hidden_dim": 32, "out_dim": 16}, "predictor": {"hidden_dim": 32, "out_dim": 16},
               "backend": "reference", "gather_distributed": False},
    # 16 px / patch 4 = 16 patches: 4 chunks of 4, targets in 2 chunks (both code paths of masked.py)
    "mmoco": {"projector": {"hidden_dim": 32, "out_dim": 16}, "predictor": {"hidden_dim": 32, "out_dim": 16},
              "backend": "reference", "gather_distributed": False, "n_chunks": 4, "target_chunks": 2,
              "cross_attention": True},
    "mbyol": {"projector": {"hidden_dim": 32, "out_dim": 16}, "predictor": {"hidden_dim": 32, "out_dim": 16},
              "n_chunks": 4},
}


def tiny_method(name: str, tmp_path, **model):
    layout_only_folder(tmp_path, "a")
    cfg = TrainConfig.model_validate({
        "data": {"dataset": "folder", "root": str(tmp_path), "image_size": 16},
        "model": {"arch": "test_vit", "patch_size": 4, **model},
        "method": {"name": name, **SMALL_HEADS[name]},
    })
    torch.manual_seed(0)
    return build_method(cfg)


def random_batch(method, b: int = 6) -> Batch:
    crops = {c.name: torch.randn(c.count, b, 3, c.size or 16, c.size or 16) for c in method.crops()}
    return Batch(crops, torch.zeros(b, dtype=torch.long), torch.arange(b))


def test_registry_covers_every_documented_name_once():
    names = method_names()
    assert len(names) == len(set(names)) == len(METHODS)
    assert {"simclr", "byol", "simsiam", "mocov3"} <= set(names)


@pytest.mark.parametrize("name", sorted(SMALL_HEADS))
def test_groups_crops_and_one_training_step(name, tmp_path):
    method = tiny_method(name, tmp_path)
    assert isinstance(method, MethodModule) and isinstance(method.encoder, PackedViT)
    check_crops(method.crops())
    # every trainable parameter in exactly one group; nothing of a target network is trained
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    groups, _ = optimizer_groups(method.param_groups(), 0.05)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)
    target = getattr(method, "target", None)
    if target is not None:
        assert not any(p.requires_grad for p in target.parameters())
    out = method(random_batch(method), StepContext(0, 10, 100, seed=0))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert method.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # the encoder learns
    for k, v in out.metrics.items():
        assert v.ndim == 0 and not v.requires_grad, k


@pytest.mark.parametrize("name", ["byol", "simclr"])
def test_frozen_patch_embed_stays_at_init_while_the_blocks_train(name, tmp_path):
    method = tiny_method(name, tmp_path, freeze_patch_embed=True)
    proj = method.encoder.patch_embed.proj
    before = proj.weight.detach().clone(), proj.bias.detach().clone()
    qkv = method.encoder.blocks[0].attn.qkv.weight.detach().clone()
    groups, _ = optimizer_groups(method.param_groups(), 0.05)
    assert all(p is not proj.weight and p is not proj.bias for g in groups for p in g["params"])
    opt = torch.optim.AdamW(groups, lr=1e-2)
    method(random_batch(method), StepContext(0, 10, 100, seed=0)).loss.backward()
    opt.step()
    assert torch.equal(proj.weight, before[0]) and torch.equal(proj.bias, before[1])
    assert not torch.equal(method.encoder.blocks[0].attn.qkv.weight, qkv)


def test_frozen_patch_embed_is_refused_for_a_resnet(tmp_path):
    with pytest.raises(ValueError, match="freeze_patch_embed is for ViTs"):
        tiny_method("simclr", tmp_path, arch="test_resnet", freeze_patch_embed=True)


@pytest.mark.parametrize("name", ["byol", "mocov3", "mbyol"])
def test_ema_target_moves_as_the_fp32_formula_in_bf16(name, tmp_path):
    """What DeepSpeed bf16 does (module.bfloat16()), then one update with the schedule's momentum:
    the fp32 master must equal m·old + (1 − m)·online exactly in fp32, and differ from the old one
    (an update applied to bf16 weights would mostly round away at m ≈ 0.99)."""
    method = tiny_method(name, tmp_path).bfloat16()
    assert isinstance(method, AfterStep)
    master_before = [m.clone() for m in method.target.master]
    assert all(m.dtype == torch.float32 for m in master_before)
    with torch.no_grad():
        for p in list(method.encoder.parameters()) + list(method.projector.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    online = [p.detach().float() for p in list(method.encoder.parameters()) + list(method.projector.parameters())]
    ctx = StepContext(step=3, steps_per_epoch=10, total_steps=50, seed=0)
    method.after_step(ctx)
    m = cosine_momentum(method.cfg.base_momentum, 3 / 50)
    for after, before, o in zip(method.target.master, master_before, online):
        torch.testing.assert_close(after, m * before + (1 - m) * o, rtol=0, atol=1e-6)
    moved = sum(int((a != b).sum()) for a, b in zip(method.target.master, master_before))
    assert moved > 0.9 * sum(b.numel() for b in master_before)
    # the bf16 compute copy is the master rounded once
    for p, mst in zip(method.target.net.parameters(), method.target.master):
        assert p.dtype == torch.bfloat16 and torch.equal(p, mst.to(torch.bfloat16))


def test_ema_target_checkpoint_round_trip_keeps_fp32(tmp_path):
    method = tiny_method("byol", tmp_path).bfloat16()
    with torch.no_grad():
        for m in method.target.master:
            m.add_(torch.randn_like(m) * 1e-4)  # below a bf16 ulp of most weights
    sd = method.state_dict()
    fresh = tiny_method("byol", tmp_path).bfloat16()
    fresh.load_state_dict(sd)
    for a, b in zip(fresh.target.master, method.target.master):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_step_context_generator_is_a_pure_function_of_seed_and_step():
    draw = lambda ctx: torch.rand(5, generator=ctx.generator())  # noqa: E731
    a = StepContext(7, 10, 100, seed=3)
    assert torch.equal(draw(a), draw(StepContext(7, 10, 100, seed=3)))
    assert not torch.equal(draw(a), draw(StepContext(8, 10, 100, seed=3)))
    assert not torch.equal(draw(a), draw(StepContext(7, 10, 100, seed=4)))
    assert not torch.equal(draw(a), draw(StepContext(7, 10, 100, seed=3, micro_step=1)))
    assert a.epoch == pytest.approx(0.7) and a.progress == pytest.approx(0.07)
