"""SwAV (Caron et al. 2020): swapped prediction of Sinkhorn codes over multi-crop.

Every crop (2 global + V local) → encoder → projector → L2-normalised z → prototype scores
``z·Cᵀ`` (C: K prototypes, 3,000 on ImageNet). Codes Q of each global crop come from
``ops.sinkhorn`` (ε = 0.05, 3 iterations, no gradient, over the global batch); every other crop
predicts them: ℓ = −Σ_k Q_k · log softmax(scores/τ)_k with τ = 0.1, averaged over the predicting
crops and the two global crops — SwAV's official ``main_swav.py``.

Prototypes are L2-normalised before every forward (no gradient; the official code does it at the
start of each iteration) and frozen for the first epoch through their own parameter group's LR
scale (the official code zeroes their gradient for that many iterations; with AdamW an LR of 0
also means no weight decay and no moment-driven drift). Optional queue (``queue_length`` > 0): the
last embeddings of each global crop, kept per rank as in the official code, join the Sinkhorn batch
once the queue is full and ``queue_start_epoch`` is reached; they are scored with the current
prototypes and only the batch's own codes are used.

Global crops go through the encoder in one call, local crops in another (one call per resolution,
as the official multi-crop forward), so BN statistics are per resolution.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from fastssl import ops
from fastssl.config_base import Section
from fastssl.data.batch import Batch
from fastssl.data.crops import CropSpec
from fastssl.methods.accel_config import AccelConfig
from fastssl.methods.base import MethodModule, ParamGroup, StepContext, StepOutput, trainable
from fastssl.methods.parts import pair_metrics, param_dtype, swapped_prediction
from fastssl.models.heads import HeadConfig, MLPHead
from fastssl.models.queue import KeyQueue


def _head() -> HeadConfig:
    return HeadConfig(hidden_dim=2048, out_dim=128, num_layers=2, norm="batchnorm")


class SwAVConfig(Section):
    name: Literal["swav"] = "swav"
    temperature: float = Field(0.1, gt=0, description="τ of the swapped prediction's softmax (SwAV: 0.1).")
    epsilon: float = Field(0.05, gt=0, description="Sinkhorn entropy regularisation ε (SwAV: 0.05).")
    sinkhorn_iterations: int = Field(3, ge=1, description="Sinkhorn-Knopp iterations (SwAV: 3).")
    n_prototypes: int = Field(3000, ge=1, description="K prototypes (SwAV on ImageNet: 3,000).")
    freeze_prototypes_epochs: float = Field(1.0, ge=0, description="Prototypes get LR 0 for this many (fractional) epochs (SwAV: 1).")
    global_scale: tuple[float, float] = Field((0.14, 1.0), description="Random-resized-crop area range of the 2 global crops.")
    n_local: int = Field(6, ge=0, description="V local crops per image (SwAV: 6); 0: two crops only.")
    local_size: int = Field(96, ge=1, description="Side of the local crops in pixels (SwAV: 96 at 224).")
    local_scale: tuple[float, float] = Field((0.05, 0.14), description="Area range of the local crops.")
    queue_length: int = Field(0, ge=0, description="Per-rank queue of global-crop embeddings (0: none; SwAV: 3,840 at batch 256); a multiple of the batch.")
    queue_start_epoch: float = Field(15.0, ge=0, description="Epoch from which the queue is filled and used (SwAV: 15).")
    gather_distributed: bool = Field(True, description="Sinkhorn over the global batch (SwAV's distributed_sinkhorn).")
    head: HeadConfig = Field(default_factory=_head, description="Projector before the prototypes (SwAV: 2048 → 128, BN).")
    accel: AccelConfig | None = Field(None, description="Intermediate losses (partial back-prop, hard region pairs); ResNet only, no local crops.")

    @model_validator(mode="after")
    def _accel_without_multicrop(self) -> "SwAVConfig":
        if self.accel is not None and self.n_local:
            raise ValueError("method.accel on swav needs method.n_local: 0 (the paper's Accel-SwAV runs without multi-crop)")
        return self


class SwAV(MethodModule):
    Config = SwAVConfig

    def __init__(self, cfg: SwAVConfig, encoder: nn.Module):
        super().__init__(cfg, encoder)
        self.projector = MLPHead(encoder.num_features, cfg.head)
        self.prototypes = nn.Linear(cfg.head.out_dim, cfg.n_prototypes, bias=False)
        # On the sphere from the start: the first step too is taken from a unit point where an optimizer
        # keeps its own fp32 copy (made from these values; the forward's normalisation does not reach it).
        self.normalize_prototypes_()
        self.queues = nn.ModuleList(KeyQueue(cfg.queue_length, cfg.head.out_dim, seed=i) for i in range(2)) if cfg.queue_length else None

    def crops(self) -> tuple[CropSpec, ...]:
        c = self.cfg
        # SwAV's recipe is symmetric: blur 0.5 and no solarize on every crop (official main_swav.py).
        out = [CropSpec("global", count=2, scale=c.global_scale, blur_p=0.5, solarize_p=0.0)]
        if c.n_local:
            out.append(CropSpec("local", count=c.n_local, size=c.local_size, scale=c.local_scale, blur_p=0.5, solarize_p=0.0))
        return tuple(out)

    def param_groups(self) -> list[ParamGroup]:
        freeze = self.cfg.freeze_prototypes_epochs

        def prototypes_lr(epoch: float) -> float:
            return 0.0 if epoch < freeze else 1.0

        online = trainable(self.encoder, "encoder.") + trainable(self.projector, "projector.")
        return [ParamGroup("online", online), ParamGroup("prototypes", trainable(self.prototypes, "prototypes."), lr_scale=prototypes_lr)]

    @torch.no_grad()
    def normalize_prototypes_(self, *more: nn.Linear) -> None:
        for p in (self.prototypes, *more):
            p.weight.copy_(F.normalize(p.weight.float(), dim=1).to(p.weight.dtype))

    def unit_rows(self, stages=None) -> list[nn.Parameter]:
        """The prototypes (with Accel, every stage's): the trainer keeps them on the sphere in the
        optimizer's fp32 copy after each step; the forward's in-place normalisation serves the steps
        taken outside the trainer (benches, tests) and is a no-op after the trainer's."""
        return [self.prototypes.weight, *(p.weight for p in (getattr(stages, "prototypes", None) or ()))]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[n·B, 3, s, s]`` → L2-normalised projections ``[n·B, D]``."""
        return F.normalize(self.projector(self.encoder(x.to(param_dtype(self.encoder)))), dim=1)

    def codes(self, scores: torch.Tensor, queue_scores: torch.Tensor | None = None) -> torch.Tensor:
        """Sinkhorn codes ``[B, K]`` of one global crop's scores (optionally with queued rows first)."""
        c = self.cfg
        s = scores.detach() if queue_scores is None else torch.cat([queue_scores, scores.detach()])
        return ops.sinkhorn(s, c.epsilon, c.sinkhorn_iterations, gather_distributed=c.gather_distributed)[-scores.shape[0]:]

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        """batch["global"]: [2, B, 3, S, S]; batch["local"]: [V, B, 3, s, s] when n_local > 0."""
        self.normalize_prototypes_()
        c = self.cfg
        g = batch["global"]
        z = [self.embed(g.flatten(0, 1))]
        if c.n_local:
            z.append(self.embed(batch["local"].flatten(0, 1)))
        z = torch.cat(z)
        scores = list(self.prototypes(z).chunk(2 + c.n_local))
        zg = z[: 2 * g.shape[1]].chunk(2)
        use_queue = self.queues is not None and ctx.epoch >= c.queue_start_epoch
        codes = []
        with torch.no_grad():
            for i in range(2):
                q_scores = self.prototypes(self.queues[i].keys.to(z.dtype)) if use_queue and self.queues[i].full() else None
                codes.append(self.codes(scores[i], q_scores))
                if use_queue:
                    self.queues[i].enqueue(zg[i].detach(), gather_distributed=False)  # per-rank queue, as SwAV's
        loss = swapped_prediction(scores, codes, c.temperature)
        return StepOutput(loss=loss, metrics={**pair_metrics(zg[0], zg[1]), "code_max": codes[0].max(1).values.mean()})

    # A loss after every ResNet stage (``method.accel``: ``build_method`` wraps the method in
    # ``methods/accel.py``'s ``Accel``, which calls these). Both global crops through the one
    # encoder; per-stage projector + prototypes (the last stage uses the method's own); codes from
    # ``ops.sinkhorn`` on each crop, swapped prediction.
    def extend_to_stages(self, stages) -> dict[str, nn.Module]:
        d = stages.cfg.stage_head.out_dim
        stages.prototypes = nn.ModuleList(nn.Linear(d, self.cfg.n_prototypes, bias=False) for _ in range(len(stages.heads)))
        self.normalize_prototypes_(*stages.prototypes)  # on the sphere from the start, as the method's own
        return {"online": stages.heads, "prototypes": stages.prototypes}

    def stage_prototypes(self, i: int, stages) -> nn.Linear:
        return self.prototypes if stages.is_last(i) else stages.prototypes[i - 1]

    def stage_inputs(self, batch: Batch, stages):
        self.normalize_prototypes_(*stages.prototypes)  # every stage's, as the forward does its own
        v = batch["global"].to(param_dtype(self.encoder))
        return (self.encoder, v[0]), (self.encoder, v[1])

    def embed_stage(self, i: int, side: int, maps: torch.Tensor, stages) -> torch.Tensor:
        return F.normalize(stages.head(i, self.projector)(self.encoder.pool(maps)), dim=1)

    def stage_loss(self, i: int, za: torch.Tensor, zb: torch.Tensor, stages) -> torch.Tensor:
        proto = self.stage_prototypes(i, stages)
        sa, sb = proto(za), proto(zb)
        with torch.no_grad():
            codes = [self.codes(sa), self.codes(sb)]
        return swapped_prediction([sa, sb], codes, self.cfg.temperature)

    def pair_loss(self, i: int, za: torch.Tensor, zb: torch.Tensor, stages) -> torch.Tensor:
        """``[M, B, D]`` pairs → ``[B, M, M]``: the swapped prediction between region p of view a and
        region q of view b, with each region's codes from a Sinkhorn over the batch."""
        proto, t = self.stage_prototypes(i, stages), self.cfg.temperature
        sa, sb = proto(za).float(), proto(zb).float()  # [M, B, K]
        qa = torch.stack([self.codes(s) for s in sa])
        qb = torch.stack([self.codes(s) for s in sb])
        la, lb = F.log_softmax(sa / t, dim=-1), F.log_softmax(sb / t, dim=-1)
        # view b's region q predicts a's codes of region p, and a's region p predicts b's of q
        return -(torch.einsum("pbk,qbk->bpq", qa, lb) + torch.einsum("qbk,pbk->bpq", qb, la)) / 2
