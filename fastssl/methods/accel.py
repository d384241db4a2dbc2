"""Accel (intermediate_contrastive_loss.txt): a projection head and a loss of the method's kind after
every ResNet stage, partial back-propagation (PB) and block-wise hard region pairs (HP).

PB (Algorithm 1): each step draws one stage s uniformly from ``ctx.generator()`` (seeded by run
seed and step: the same draw on every rank and after a resume); the forward runs stem … stage s
only and back-props from loss s only, so later stages and the other heads take no gradient.
Without PB every stage's loss is computed and their mean back-propagated.

HP (eq. 4): after the stages in ``hard_pair_stages`` (paper: 1 and 2) and only when a later stage
is still to run, each view's map is cut into M random regions (side = 3/4 of the map's, per image);
per image the pair (p, q) with the largest loss among the M×M goes on, the rest is dropped. The
pair's loss is the method's, on the stage head's embeddings of the pooled regions, computed without
gradient. "We only process the positive pairs, and do nothing for the negative pairs" (§2.3): the
negatives are held fixed, so for InfoNCE-type losses (SimCLR, MoCo v2) the largest loss is the
lowest positive cosine, which is what ``cosine_pair_loss`` ranks; SwAV's pair loss is its swapped
prediction between the two regions' Sinkhorn codes (``AccelSwAV.pair_loss``). The stage-s loss
itself is computed on the full map of stage s (before any cropping after it).

Shapes: maps ``[B, C, H, W]``; regions ``[M, B, C, h, w]``; pair losses ``[B, M, M]`` (row p: region
p of view a, column q: region q of view b).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastssl import ops
from fastssl.methods.accel_config import AccelConfig
from fastssl.methods.losses import swapped_prediction
from fastssl.methods.output import StepOutput
from fastssl.methods.parts import pair_metrics, param_dtype
from fastssl.models.heads import MLPHead
from fastssl.models.queue import KeyQueue
from fastssl.models.resnet import ResNetTaps


def draw_stage(cfg: AccelConfig, n_stages: int, g: torch.Generator) -> int:
    """The stage (1-based) the forward stops at: uniform over 1 … n with PB, n without."""
    if not cfg.partial_backprop:
        return n_stages
    return int(torch.randint(1, n_stages + 1, (1,), generator=g))


def region_crops(x: torch.Tensor, m: int, scale: float, g: torch.Generator) -> torch.Tensor:
    """``x [B, C, H, W]`` → ``[m, B, C, h, w]``: m random square-ish regions per image, h = ⌊scale·H⌋ (≥ 1),
    offsets drawn per region and image from ``g``."""
    b, _, hh, ww = x.shape
    h, w = max(1, int(scale * hh)), max(1, int(scale * ww))
    y0 = torch.randint(0, hh - h + 1, (m, b), generator=g).to(x.device)
    x0 = torch.randint(0, ww - w + 1, (m, b), generator=g).to(x.device)
    rows = (y0[..., None] + torch.arange(h, device=x.device))[..., :, None]  # [m, B, h, 1]
    cols = (x0[..., None] + torch.arange(w, device=x.device))[..., None, :]  # [m, B, 1, w]
    img = torch.arange(b, device=x.device)[None, :, None, None]
    return x[img, :, rows, cols].permute(0, 1, 4, 2, 3)  # advanced indices first: [m, B, h, w, C] → [m, B, C, h, w]


def hardest_pair(pair_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, M, M]`` losses → (p, q) ``[B]`` each: the arg-max pair per image (first in row-major order on ties)."""
    m = pair_loss.shape[-1]
    flat = pair_loss.flatten(1).argmax(1)
    return flat // m, flat % m


def pick(regions: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``regions [M, B, C, h, w]``, ``idx [B]`` → ``[B, C, h, w]``: region idx[b] of image b."""
    return regions[idx, torch.arange(regions.shape[1], device=regions.device)]


def cosine_pair_loss(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """``[M, B, D]`` × ``[M, B, D]`` → ``[B, M, M]``: −cos(za[p, b], zb[q, b]), the part of an InfoNCE
    loss that depends on the positive pair when the negatives are held fixed (monotone in it)."""
    return -torch.einsum("pbd,qbd->bpq", F.normalize(za.float(), dim=-1), F.normalize(zb.float(), dim=-1))


def run_stages(enc_a: ResNetTaps, enc_b: ResNetTaps, xa: torch.Tensor, xb: torch.Tensor, stop: int,
               select: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
               hp_stages: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stem and stages 1 … ``stop`` of two branches; returns each stage's maps (before any crop after it).

    ``enc_a is enc_b`` (SimCLR, SwAV): both views run in one call per layer, BN over both as in the
    plain methods. ``select(i, a, b)`` replaces the maps after stage i ∈ hp_stages when i < stop."""
    same = enc_a is enc_b

    def both(fa, fb, a, b):
        if same and a.shape == b.shape:
            return fa(torch.cat([a, b])).chunk(2)
        return fa(a), fb(b)

    a, b = both(enc_a.stem, enc_b.stem, xa, xb)
    out = []
    for i in range(1, stop + 1):
        a, b = both(enc_a.stages[i - 1], enc_b.stages[i - 1], a, b)
        out.append((a, b))
        if select is not None and i in hp_stages and i < stop:
            a, b = select(i, a, b)
    return out


def check_resnet(encoder: nn.Module) -> ResNetTaps:
    if not isinstance(encoder, ResNetTaps):
        raise ValueError("method.accel needs a ResNet encoder (model.arch: resnet18, resnet50, ...)")
    return encoder


def stage_heads(encoder: ResNetTaps, cfg: AccelConfig) -> nn.ModuleList:
    """One projection head per stage but the last (the method's own head serves the last stage)."""
    return nn.ModuleList(MLPHead(c, cfg.stage_head) for c in encoder.stage_channels[:-1])


class _Accel(nn.Module):
    """The shared step: draw the stage, run the branches with HP, losses of the chosen stage(s).

    Subclasses give ``branches(method, batch)``, ``embed(method, i, side, maps)`` and
    ``stage_loss(method, i, za, zb)``; ``pair_loss(method, i, za, zb)`` defaults to the cosine rank."""

    def __init__(self, encoder: nn.Module, cfg: AccelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_stages = len(check_resnet(encoder).stages)
        self.heads = stage_heads(encoder, cfg)

    def pair_loss(self, method, i: int, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        return cosine_pair_loss(za, zb)

    def step(self, method, batch, ctx) -> tuple[torch.Tensor, int, tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        g = ctx.generator()
        stop = draw_stage(cfg, self.n_stages, g)
        (enc_a, xa), (enc_b, xb) = self.branches(method, batch)

        def select(i, a, b):
            m = cfg.regions
            ra, rb = region_crops(a, m, cfg.region_scale, g), region_crops(b, m, cfg.region_scale, g)
            with torch.no_grad():
                za = self.embed(method, i, 0, ra.flatten(0, 1)).unflatten(0, (m, -1))
                zb = self.embed(method, i, 1, rb.flatten(0, 1)).unflatten(0, (m, -1))
                p, q = hardest_pair(self.pair_loss(method, i, za, zb))
            return pick(ra, p), pick(rb, q)

        maps = run_stages(enc_a, enc_b, xa, xb, stop, select if cfg.hard_pairs else None, cfg.hard_pair_stages)
        stages = [stop] if cfg.partial_backprop else list(range(1, stop + 1))
        losses, last = [], None
        for i in stages:
            a, b = maps[i - 1]
            za, zb = self.embed(method, i, 0, a), self.embed(method, i, 1, b)
            losses.append(self.stage_loss(method, i, za, zb))
            last = (za, zb)
        return torch.stack(losses).mean(), stop, last

    def forward(self, method, batch, ctx) -> StepOutput:
        loss, stop, (za, zb) = self.step(method, batch, ctx)
        metrics = pair_metrics(za, zb)
        metrics["accel_stage"] = torch.tensor(float(stop))
        return StepOutput(loss=loss, metrics=metrics)


def _pool_head(encoder: ResNetTaps, head: nn.Module, maps: torch.Tensor) -> torch.Tensor:
    return head(encoder.pool(maps))


class AccelSimCLR(_Accel):
    """Both views through the one encoder; stage heads, the SimCLR projector at the last stage."""

    def branches(self, method, batch):
        v = batch["views"].to(param_dtype(method.encoder))
        return (method.encoder, v[0]), (method.encoder, v[1])

    def head(self, method, i: int) -> nn.Module:
        return method.projector if i == self.n_stages else self.heads[i - 1]

    def embed(self, method, i, side, maps):
        return _pool_head(method.encoder, self.head(method, i), maps)

    def stage_loss(self, method, i, za, zb):
        return method.loss(za, zb)


class AccelMoCo(_Accel):
    """Queries: online encoder on view 1; keys: the EMA copy (encoder, projector, stage heads) on
    view 2. Per-stage queues (the last stage uses the method's own queue)."""

    def __init__(self, encoder: nn.Module, cfg: AccelConfig, queue_size: int):
        super().__init__(encoder, cfg)
        self.queues = nn.ModuleList(KeyQueue(queue_size, cfg.stage_head.out_dim, seed=i + 1) for i in range(self.n_stages - 1))

    def queue_of(self, method, stage: int) -> KeyQueue:
        return method.queue if stage == self.n_stages else self.queues[stage - 1]

    def branches(self, method, batch):
        v = batch["views"].to(param_dtype(method.encoder))
        return (method.encoder, v[0]), (method.target.net[0], v[1])

    def embed(self, method, i, side, maps):
        if side == 0:
            head = method.projector if i == self.n_stages else self.heads[i - 1]
            return _pool_head(method.encoder, head, maps)
        net = method.target.net
        head = net[1] if i == self.n_stages else net[2][i - 1]
        with torch.no_grad():
            return _pool_head(net[0], head, maps)

    def stage_loss(self, method, i, q, k):
        method._pending.append((i, k))
        return method.loss(q, k, self.queue_of(method, i))


class AccelSwAV(_Accel):
    """Both global crops through the one encoder; per-stage projector + prototypes (the last stage
    uses the method's own); codes from ``ops.sinkhorn`` on each crop, swapped prediction."""

    def __init__(self, encoder: nn.Module, swav_cfg):
        super().__init__(encoder, swav_cfg.accel)
        d = swav_cfg.accel.stage_head.out_dim
        self.prototypes = nn.ModuleList(nn.Linear(d, swav_cfg.n_prototypes, bias=False) for _ in range(self.n_stages - 1))

    def prototype_list(self) -> list[nn.Linear]:
        return list(self.prototypes)

    def protos(self, method, i: int) -> nn.Linear:
        return method.prototypes if i == self.n_stages else self.prototypes[i - 1]

    def branches(self, method, batch):
        v = batch["global"].to(param_dtype(method.encoder))
        return (method.encoder, v[0]), (method.encoder, v[1])

    def embed(self, method, i, side, maps):
        head = method.projector if i == self.n_stages else self.heads[i - 1]
        return F.normalize(_pool_head(method.encoder, head, maps), dim=1)

    def stage_loss(self, method, i, za, zb):
        proto = self.protos(method, i)
        sa, sb = proto(za), proto(zb)
        with torch.no_grad():
            codes = [method.codes(sa), method.codes(sb)]
        return swapped_prediction([sa, sb], codes, method.cfg.temperature)

    def pair_loss(self, method, i, za, zb):
        """``[M, B, D]`` pairs → ``[B, M, M]``: the swapped prediction between region p of view a and
        region q of view b, with each region's codes from a Sinkhorn over the batch."""
        proto, t = self.protos(method, i), method.cfg.temperature
        sa, sb = proto(za).float(), proto(zb).float()  # [M, B, K]
        qa = torch.stack([method.codes(s) for s in sa])
        qb = torch.stack([method.codes(s) for s in sb])
        la, lb = F.log_softmax(sa / t, dim=-1), F.log_softmax(sb / t, dim=-1)
        # view b's region q predicts a's codes of region p, and a's region p predicts b's of q
        return -(torch.einsum("pbk,qbk->bpq", qa, lb) + torch.einsum("qbk,pbk->bpq", qb, la)) / 2
