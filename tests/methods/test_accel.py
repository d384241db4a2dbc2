"""Accel: region crops against explicit slicing, hard-pair selection = brute-force arg-max on constructed
maps, the stage draw is the same on every rank and after a resume, and partial back-prop leaves the
parameters of later stages (and of the other heads) untouched in that step."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastssl.data.batch import Batch
from fastssl.methods.accel import Accel, cosine_pair_loss, draw_stage, hardest_pair, pick, region_crops
from fastssl.methods.accel_config import AccelConfig
from fastssl.methods.base import StepContext
from fastssl.methods.simclr import SimCLR, SimCLRConfig
from fastssl.models.heads import HeadConfig
from fastssl.models.resnet import ResNetTaps


def test_region_crops_are_slices_of_the_map():
    x = torch.randn(5, 3, 7, 9)  # odd sizes, non-square
    regions = region_crops(x, 3, 0.75, torch.Generator().manual_seed(1))
    assert regions.shape == (3, 5, 3, 5, 6)  # ⌊0.75·7⌋, ⌊0.75·9⌋
    g = torch.Generator().manual_seed(1)  # the same draws, in the same order
    y0 = torch.randint(0, 7 - 5 + 1, (3, 5), generator=g)
    x0 = torch.randint(0, 9 - 6 + 1, (3, 5), generator=g)
    for m in range(3):
        for b in range(5):
            ref = x[b, :, y0[m, b]:y0[m, b] + 5, x0[m, b]:x0[m, b] + 6]
            assert torch.equal(regions[m, b], ref)


def test_hard_pair_selection_picks_the_argmax_on_constructed_maps():
    """Maps whose pooled region features are known: view a's region p and view b's region q are
    constant maps along a direction; the pair whose directions are furthest apart is the hardest."""
    B, M, C = 6, 3, 4
    g = torch.Generator().manual_seed(0)
    dirs_a, dirs_b = torch.randn(M, B, C, generator=g), torch.randn(M, B, C, generator=g)
    ra = dirs_a[..., None, None].expand(M, B, C, 2, 2)
    rb = dirs_b[..., None, None].expand(M, B, C, 2, 2)
    za, zb = ra.mean((-1, -2)), rb.mean((-1, -2))  # an identity "head" on pooled regions
    p, q = hardest_pair(cosine_pair_loss(za, zb))
    for b in range(B):  # brute force: the lowest cosine over the M×M pairs
        cos = [[F.cosine_similarity(dirs_a[i, b], dirs_b[j, b], dim=0).item() for j in range(M)] for i in range(M)]
        want = min(((i, j) for i in range(M) for j in range(M)), key=lambda ij: cos[ij[0]][ij[1]])
        assert (p[b].item(), q[b].item()) == want
        assert torch.equal(pick(ra, p)[b], ra[want[0], b]) and torch.equal(pick(rb, q)[b], rb[want[1], b])


def test_hardest_pair_is_the_argmax_of_any_loss_table():
    loss = torch.randn(7, 2, 2)
    p, q = hardest_pair(loss)
    for b in range(7):
        assert loss[b, p[b], q[b]] == loss[b].max()


def _stages(seed: int, steps: int = 24) -> list[int]:
    cfg = AccelConfig()
    return [draw_stage(cfg, 4, StepContext(s, 10, 100, seed).generator()) for s in range(steps)]


# Another process (rank 1 of a launch, or a resumed run) rebuilds the step context from (seed, step)
# and draws with draw_stage's rule, uniform over 1 … 4 from ctx.generator(); light imports only.
_DRAW_ELSEWHERE = """
import torch
from fastssl.methods.base import StepContext
print([int(torch.randint(1, 5, (1,), generator=StepContext(s, 10, 100, 7).generator())) for s in range(24)])
"""


def test_stage_draw_is_the_same_on_every_rank_and_after_a_resume():
    """The draw depends on (seed, step, micro-step) only, never on the rank or the process's RNG
    state: another process (rank 1 of a launch, or a run resumed at any step) draws the same."""
    import os
    import subprocess
    import sys

    torch.manual_seed(123)  # the global RNG must not matter
    proc = subprocess.run([sys.executable, "-c", _DRAW_ELSEWHERE], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(_stages(seed=7))
    resumed = [draw_stage(AccelConfig(), 4, StepContext(s, 10, 100, 7).generator()) for s in range(12, 24)]
    assert resumed == _stages(seed=7)[12:]
    assert set(_stages(seed=7, steps=200)) == {1, 2, 3, 4}  # uniform over all four stages
    assert _stages(seed=8) != _stages(seed=7)
    assert draw_stage(AccelConfig(partial_backprop=False), 4, torch.Generator()) == 4  # no PB: always the last


def _simclr_accel(**accel) -> Accel:
    torch.manual_seed(0)
    h = HeadConfig(hidden_dim=16, out_dim=8)
    cfg = SimCLRConfig(loss="nt_xent", head=h, gather_distributed=False, accel=AccelConfig(stage_head=h, **accel))
    return Accel(SimCLR(cfg, ResNetTaps.from_timm("test_resnet", small_stem=True)), cfg.accel)  # as build_method does


def _step_with_stage(stage: int) -> int:
    cfg = AccelConfig()
    return next(s for s in range(1000) if draw_stage(cfg, 4, StepContext(s, 10, 1000, 0).generator()) == stage)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_partial_backprop_leaves_later_stages_untouched(stage):
    m = _simclr_accel()
    batch = Batch({"views": torch.randn(2, 6, 3, 16, 16)}, torch.zeros(6, dtype=torch.long), torch.arange(6))
    ctx = StepContext(_step_with_stage(stage), 10, 1000, 0)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    out = m(batch, ctx)
    assert out.metrics["accel_stage"].item() == stage
    out.loss.backward()
    opt.step()
    later = tuple(f"encoder.layer{i}." for i in range(stage + 1, 5)) + ("projector.",)
    other_heads = tuple(f"accel.heads.{i}." for i in range(3) if i != stage - 1)
    moved = set()
    for n, p in m.named_parameters():
        untouched = n.startswith(later + other_heads)
        assert (p.grad is None) == untouched, n
        if untouched:
            assert torch.equal(p, before[n]), n  # AdamW skips parameters without a gradient
        elif not torch.equal(p, before[n]):
            moved.add(n.split(".")[1])
    # (some parameters of a used block get an exactly zero gradient: timm zero-initialises the last BN
    # of every residual branch, so only "something moved in every used stage" is checked)
    assert {f"layer{i}" for i in range(1, stage + 1)} <= moved and "conv1" in moved, moved


def test_the_wrapper_keeps_the_checkpoint_keys_of_the_methods():
    """``Accel`` around MoCo v2 / SwAV: the state_dict keys runs have always written (the method's own,
    ``accel.*`` for the stage parts, the key encoder following the stage heads as ``target.net.2``),
    and the stage parameters in the method's parameter groups (resume of existing runs)."""
    from fastssl.methods.mocov2 import MoCoV2, MoCoV2Config
    from fastssl.methods.swav import SwAV, SwAVConfig

    h = HeadConfig(hidden_dim=16, out_dim=8)
    acc = AccelConfig(stage_head=h)
    enc = lambda: ResNetTaps.from_timm("test_resnet", small_stem=True)  # noqa: E731
    moco = Accel(MoCoV2(MoCoV2Config(head=h.model_copy(update={"norm": "none"}), queue_size=16, accel=acc), enc()), acc)
    swav = Accel(SwAV(SwAVConfig(head=h, n_local=0, n_prototypes=5, accel=acc), enc()), acc)
    for model, want in ((moco, ["encoder", "projector", "queue", "accel.heads", "accel.queues", "target.net.0", "target.net.1", "target.net.2"]),
                        (swav, ["encoder", "projector", "prototypes", "accel.heads", "accel.prototypes"])):
        tops = []
        for k in model.state_dict():
            top = ".".join(k.split(".")[:3 if k.startswith("target") else 2 if k.startswith("accel") else 1])
            if top not in tops:
                tops.append(top)
        assert tops == want
    assert [n for n, _ in moco.param_groups()[0].params if n.startswith("accel")] == [n for n, _ in moco.named_parameters() if n.startswith("accel.heads")]
    groups = {g.name: {n.split(".")[0] + "." + n.split(".")[1] for n, _ in g.params} for g in swav.param_groups()}
    assert "accel.heads" in groups["online"] and "accel.prototypes" in groups["prototypes"]
