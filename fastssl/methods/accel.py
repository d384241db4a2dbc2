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
prediction between the two regions' Sinkhorn codes (``SwAV.pair_loss``). The stage-s loss itself is
computed on the full map of stage s (before any cropping after it).

``build_method`` wraps the method in ``Accel`` when ``method.accel`` is set. The method (SimCLR,
MoCo v2, SwAV) knows nothing of Accel; it implements the small ``Staged`` interface below (its
branches, its embedding and loss at a stage, optionally its pair loss and per-stage parts), and the
wrapper holds the shared step: the stage draw, the branches with HP, the losses of the chosen stage(s).

Shapes: maps ``[B, C, H, W]``; regions ``[M, B, C, h, w]``; pair losses ``[B, M, M]`` (row p: region
p of view a, column q: region q of view b).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.methods.accel_config import AccelConfig
from fastssl.methods.base import ParamGroup, StepOutput, trainable
from fastssl.methods.parts import pair_metrics
from fastssl.models.heads import MLPHead
from fastssl.models.resnet import ResNetTaps
from fastssl.ops.host_copy import to_device


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
    y0 = torch.randint(0, hh - h + 1, (m, b), generator=g)
    x0 = torch.randint(0, ww - w + 1, (m, b), generator=g)
    y0, x0 = to_device(torch.stack([y0, x0]), x.device)  # one non-blocking copy (fastssl.ops.host_copy)
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


class StageParts(nn.Module):
    """What Accel adds for stages 1 … n−1: a projection head each (``heads[i − 1]``; the method's own
    head serves stage n), plus what the method adds in ``extend_to_stages`` (MoCo v2: a key queue
    per stage; SwAV: prototypes per stage). Its state_dict keys are ``accel.heads.…`` etc."""

    def __init__(self, encoder: nn.Module, cfg: AccelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_stages = len(check_resnet(encoder).stages)
        self.heads = nn.ModuleList(MLPHead(c, cfg.stage_head) for c in encoder.stage_channels[:-1])

    def is_last(self, i: int) -> bool:
        """Stage i (1-based) is the method's own: its own head, queue, prototypes."""
        return i == self.n_stages

    def head(self, i: int, own: nn.Module) -> nn.Module:
        """Stage i's projection head: ``own`` (the method's) at the last stage."""
        return own if self.is_last(i) else self.heads[i - 1]


class Staged(Protocol):
    """What a method implements for Accel (``stages``: the wrapper's ``StageParts``; ``i``: the 1-based
    stage; ``side`` 0 / 1: the branch; ``maps [B, C, H, W]`` a stage's feature maps or regions)."""

    encoder: ResNetTaps

    def stage_inputs(self, batch, stages: StageParts) -> tuple[tuple[nn.Module, torch.Tensor], tuple[nn.Module, torch.Tensor]]:
        """``((encoder_a, x_a), (encoder_b, x_b))``: the two branches' ResNets and image batches."""

    def embed_stage(self, i: int, side: int, maps: torch.Tensor, stages: StageParts) -> torch.Tensor:
        """``maps`` of stage i → the embeddings ``[B, D]`` the stage loss takes."""

    def stage_loss(self, i: int, za: torch.Tensor, zb: torch.Tensor, stages: StageParts) -> torch.Tensor:
        """The method's loss between the two branches' embeddings at stage i."""

    # Optional:
    #   pair_loss(i, za [M, B, D], zb [M, B, D], stages) -> [B, M, M]   default: cosine_pair_loss
    #   extend_to_stages(stages) -> {group name: module}   adds per-stage parts to ``stages`` and says
    #       which of the method's parameter groups they join (default: the heads join the first group)


class Accel(nn.Module):
    """``method`` with a loss after every ResNet stage, PB and HP.

    The method's submodules are registered here under their own names and the stage parts under
    ``accel``, so the state_dict keys are those of the method plus ``accel.…`` (and a MoCo v2 target
    that follows the stage heads too, ``target.net.2.…``): the keys runs have always written. The
    method object itself is kept outside the module tree (it shares every submodule)."""

    def __init__(self, method: nn.Module, cfg: AccelConfig):
        super().__init__()
        if dict(method.named_parameters(recurse=False)) or dict(method.named_buffers(recurse=False)):
            raise TypeError(f"{type(method).__name__} holds tensors outside its submodules; Accel wraps submodules only")
        self.__dict__["method"] = method  # not a child: its submodules are registered below
        self.cfg = method.cfg
        stages = StageParts(method.encoder, cfg)
        extend = getattr(method, "extend_to_stages", None)
        self._stage_groups = (extend(stages) if extend is not None else None) or {None: stages.heads}
        for name, child in method.named_children():
            if name == "target":  # the key order of the checkpoints written before the wrapper
                self.accel = stages
            self.add_module(name, child)
        if "accel" not in self._modules:
            self.accel = stages

    @property
    def n_stages(self) -> int:
        return self.accel.n_stages

    def crops(self) -> tuple:
        return self.method.crops()

    def param_groups(self) -> list[ParamGroup]:
        """The method's groups, the stage parts' parameters appended to the group each joins."""
        groups = self.method.param_groups()
        names = {id(m): n for n, m in self.named_modules()}
        extra: dict[str, tuple] = {}
        for group, module in self._stage_groups.items():
            key = groups[0].name if group is None else group
            extra[key] = extra.get(key, ()) + trainable(module, f"{names[id(module)]}.")
        return [replace(g, params=g.params + extra.get(g.name, ())) for g in groups]

    def train(self, mode: bool = True):
        self.method.train(mode)
        return super().train(mode)

    def after_step(self, ctx) -> None:
        hook = getattr(self.method, "after_step", None)
        if hook is not None:
            hook(ctx)

    def unit_rows(self) -> list[nn.Parameter]:
        """The method's unit-row weights, its stage parts' included (``methods/base.UnitRows``)."""
        own = getattr(self.method, "unit_rows", None)
        return own(self.accel) if own is not None else []

    def pair_loss(self, i: int, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        own = getattr(self.method, "pair_loss", None)
        return cosine_pair_loss(za, zb) if own is None else own(i, za, zb, self.accel)

    def step(self, batch, ctx) -> tuple[torch.Tensor, int, tuple[torch.Tensor, torch.Tensor]]:
        cfg, method, stages = self.accel.cfg, self.method, self.accel
        g = ctx.generator()
        stop = draw_stage(cfg, self.n_stages, g)
        (enc_a, xa), (enc_b, xb) = method.stage_inputs(batch, stages)

        def select(i, a, b):
            m = cfg.regions
            ra, rb = region_crops(a, m, cfg.region_scale, g), region_crops(b, m, cfg.region_scale, g)
            with torch.no_grad():
                za = method.embed_stage(i, 0, ra.flatten(0, 1), stages).unflatten(0, (m, -1))
                zb = method.embed_stage(i, 1, rb.flatten(0, 1), stages).unflatten(0, (m, -1))
                p, q = hardest_pair(self.pair_loss(i, za, zb))
            return pick(ra, p), pick(rb, q)

        maps = run_stages(enc_a, enc_b, xa, xb, stop, select if cfg.hard_pairs else None, cfg.hard_pair_stages)
        chosen = [stop] if cfg.partial_backprop else list(range(1, stop + 1))
        losses, last = [], None
        for i in chosen:
            a, b = maps[i - 1]
            za, zb = method.embed_stage(i, 0, a, stages), method.embed_stage(i, 1, b, stages)
            losses.append(method.stage_loss(i, za, zb, stages))
            last = (za, zb)
        return torch.stack(losses).mean(), stop, last

    def forward(self, batch, ctx) -> StepOutput:
        loss, stop, (za, zb) = self.step(batch, ctx)
        metrics = pair_metrics(za, zb)
        metrics["accel_stage"] = torch.tensor(float(stop))
        return StepOutput(loss=loss, metrics=metrics)
