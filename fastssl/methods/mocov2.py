"""MoCo v2 (Chen, Fan, Girshick & He 2020): a momentum key encoder and a queue of negative keys.

Query q = projector(encoder(view 1)), key k = EMA copy of (encoder, projector) on view 2 (no
gradient); InfoNCE with τ = 0.2 whose negatives are the K keys in the queue (65,536 on ImageNet),
not the other keys of the batch — the loss of the official ``moco/builder.py``, one direction
(MoCo v2 is not symmetrised). After every optimizer step the batch's keys of every rank are
enqueued (``KeyQueue``, oldest out) and the key encoder moves by a constant momentum m = 0.999.
Head: 2-layer MLP without BN (``Linear → ReLU → Linear``), as the official ``--mlp``.

Shuffled BN: the official code shuffles the key batch across GPUs so that a query and its key are
normalised with different BN statistics (otherwise the model can find its positive through the
statistics of its own sub-batch). It only does so across GPUs; on one rank there is nothing to
shuffle. We use SyncBatchNorm instead, which the engine applies on several CUDA ranks
(``engine/sync_bn.py``): the statistics are those of the global batch, so a sub-batch leaks nothing
either, with no extra all-gather of images and no second code path (MoCo v3 made the same switch).
CPU runs with several gloo ranks keep rank-local BN (tests only).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fastssl import ops
from fastssl.config_base import Section
from fastssl.data.batch import Batch
from fastssl.data.crops import CropSpec
from fastssl.methods.accel_config import AccelConfig
from fastssl.methods.base import MethodModule, ParamGroup, StepContext, StepOutput, trainable
from fastssl.methods.parts import pair_metrics, param_dtype
from fastssl.models.ema import EmaTarget
from fastssl.models.heads import HeadConfig, MLPHead
from fastssl.models.queue import KeyQueue
from fastssl.ops.dispatch import Backend


def _head() -> HeadConfig:
    return HeadConfig(hidden_dim=2048, out_dim=128, num_layers=2, norm="none")


class MoCoV2Config(Section):
    name: Literal["mocov2"] = "mocov2"
    temperature: float = Field(0.2, gt=0, description="τ of InfoNCE (MoCo v2: 0.2).")
    momentum: float = Field(0.999, ge=0.0, le=1.0, description="Key-encoder momentum m, constant (MoCo v2: 0.999).")
    queue_size: int = Field(65536, ge=1, description="K negative keys; a multiple of the global batch (MoCo v2: 65,536).")
    gather_distributed: bool = Field(True, description="Enqueue the keys of every rank (the global batch).")
    blur_p: float = Field(0.5, ge=0, le=1, description="Gaussian blur probability of both views (MoCo v2's augmentation: 0.5, no solarize).")
    backend: Backend = Field("auto", description="Contrastive op implementation.")
    head: HeadConfig = Field(default_factory=_head, description="MLP head; hidden_dim = the encoder width in the paper.")
    accel: AccelConfig | None = Field(None, description="Intermediate losses (partial back-prop, hard region pairs); ResNet only.")


class MoCoV2(MethodModule):
    Config = MoCoV2Config

    def __init__(self, cfg: MoCoV2Config, encoder: nn.Module):
        super().__init__(cfg, encoder)
        self.projector = MLPHead(encoder.num_features, cfg.head)
        self.queue = KeyQueue(cfg.queue_size, cfg.head.out_dim, seed=0)
        self.online = (self.encoder, self.projector)  # what the key encoder follows
        self.target = EmaTarget(*self.online)
        self._pending: list[tuple[KeyQueue, torch.Tensor]] = []  # (queue, keys) to enqueue after the step

    def crops(self) -> tuple[CropSpec, ...]:
        return (CropSpec("views", count=2, blur_p=self.cfg.blur_p, solarize_p=0.0),)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup("all", trainable(self.encoder, "encoder.") + trainable(self.projector, "projector."))]

    def loss(self, q: torch.Tensor, k: torch.Tensor, queue: KeyQueue) -> torch.Tensor:
        """q ``[B, D]`` queries, k ``[B, D]`` keys (no gradient); negatives: the queue's keys."""
        c = self.cfg
        # unit_queue: every key enters the queue normalised (``after_step``) and it starts as unit vectors
        return ops.info_nce(q, k.detach(), c.temperature, queue=queue.keys, unit_queue=True,
                            gather_distributed=c.gather_distributed, backend=c.backend)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        """batch["views"]: [2, B, 3, S, S]; view 1 → queries, view 2 → keys."""
        views = batch["views"].to(param_dtype(self.encoder))
        q = self.projector(self.encoder(views[0]))
        with torch.no_grad():
            k = self.target(views[1])
        self._pending.append((self.queue, k))
        return StepOutput(loss=self.loss(q, k, self.queue), metrics=pair_metrics(q, k))

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        # Keys enter the queue only after the step: the loss's backward still reads the queue, and
        # a checkpoint (taken after this hook) then holds everything, with nothing pending.
        for queue, k in self._pending:
            queue.enqueue(F.normalize(k.float(), dim=1), gather_distributed=self.cfg.gather_distributed)
        self._pending.clear()
        self.target.update_(*self.online, momentum=self.cfg.momentum)

    # A loss after every ResNet stage (``method.accel``: ``build_method`` wraps the method in
    # ``methods/accel.py``'s ``Accel``, which calls these). Queries: the online encoder on view 1 and
    # the stage's head; keys: the momentum copy (encoder, projector, stage heads) on view 2; each
    # stage has its own queue (the last stage uses the method's).
    def extend_to_stages(self, stages) -> None:
        stages.queues = nn.ModuleList(KeyQueue(self.cfg.queue_size, stages.cfg.stage_head.out_dim, seed=i + 1)
                                      for i in range(len(stages.heads)))
        self.online = (self.encoder, self.projector, stages.heads)
        self.target = EmaTarget(*self.online)  # nothing has trained yet: the same copy, now with the heads

    def stage_inputs(self, batch: Batch, stages):
        v = batch["views"].to(param_dtype(self.encoder))
        return (self.encoder, v[0]), (self.target.net[0], v[1])

    def embed_stage(self, i: int, side: int, maps: torch.Tensor, stages) -> torch.Tensor:
        if side == 0:
            return stages.head(i, self.projector)(self.encoder.pool(maps))
        net = self.target.net
        head = net[1] if stages.is_last(i) else net[2][i - 1]
        with torch.no_grad():
            return head(net[0].pool(maps))

    def stage_loss(self, i: int, q: torch.Tensor, k: torch.Tensor, stages) -> torch.Tensor:
        queue = self.queue if stages.is_last(i) else stages.queues[i - 1]
        self._pending.append((queue, k))
        return self.loss(q, k, queue)
