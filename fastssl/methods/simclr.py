"""SimCLR with the NT-Xent, DCL or DCLW loss (dcl.txt).

Both views go through the encoder and projector in one call, so the projector's BatchNorm sees the
2B embeddings together, as in SimCLR's reference implementation. On several CUDA ranks the engine
turns the norms into SyncBatchNorm (SimCLR's "global BN").
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from fastssl import ops
from fastssl.config_base import Section
from fastssl.data.batch import Batch
from fastssl.data.crops import TWO_VIEWS, CropSpec
from fastssl.methods.accel_config import AccelConfig
from fastssl.methods.base import MethodModule, ParamGroup, StepContext, StepOutput, one_group
from fastssl.methods.parts import encode_views, pair_metrics, param_dtype
from fastssl.models.heads import HeadConfig, MLPHead
from fastssl.ops.dispatch import Backend


class SimCLRConfig(Section):
    name: Literal["simclr"] = "simclr"
    loss: Literal["nt_xent", "dcl", "dclw"] = Field("dcl", description="nt_xent: SimCLR; dcl: decoupled (eq. 5); dclw: weighted (eq. 6).")
    temperature: float = Field(0.1, gt=0, description="τ; the DCL paper uses 0.1 on ImageNet, 0.07 on CIFAR/STL.")
    weight_sigma: float = Field(0.5, gt=0, description="σ of the DCLW weight (loss=dclw only); the paper's choice is 0.5.")
    gather_distributed: bool = Field(True, description="Negatives from all ranks (the global batch), as SimCLR does.")
    backend: Backend = Field("auto", description="Contrastive op implementation.")
    head: HeadConfig = Field(default_factory=HeadConfig)
    accel: AccelConfig | None = Field(None, description="Intermediate losses (partial back-prop, hard region pairs); ResNet only.")


class SimCLR(MethodModule):
    """encoder [B,3,H,W] → [B,E]; projector [B,E] → [B,out_dim]; loss on the two views' projections."""

    Config = SimCLRConfig

    def __init__(self, cfg: SimCLRConfig, encoder: nn.Module):
        super().__init__(cfg, encoder)
        self.projector = MLPHead(encoder.num_features, cfg.head)

    def crops(self) -> tuple[CropSpec, ...]:
        return TWO_VIEWS

    def param_groups(self) -> list[ParamGroup]:
        return one_group(self)

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.loss == "nt_xent":
            return ops.nt_xent(z1, z2, c.temperature, gather_distributed=c.gather_distributed, backend=c.backend)
        sigma = c.weight_sigma if c.loss == "dclw" else None
        return ops.dcl(z1, z2, c.temperature, weight_sigma=sigma, gather_distributed=c.gather_distributed, backend=c.backend)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        """batch["views"]: [2, B, 3, S, S]."""
        z1, z2 = self.projector(encode_views(self.encoder, batch["views"])).chunk(2)
        return StepOutput(loss=self.loss(z1, z2), metrics=pair_metrics(z1, z2))

    # A loss after every ResNet stage (``method.accel``: ``build_method`` wraps the method in
    # ``methods/accel.py``'s ``Accel``, which calls these; ``stages`` holds the heads of stages 1 … n−1).
    def stage_inputs(self, batch: Batch, stages):
        v = batch["views"].to(param_dtype(self.encoder))
        return (self.encoder, v[0]), (self.encoder, v[1])

    def embed_stage(self, i: int, side: int, maps: torch.Tensor, stages) -> torch.Tensor:
        return stages.head(i, self.projector)(self.encoder.pool(maps))

    def stage_loss(self, i: int, za: torch.Tensor, zb: torch.Tensor, stages) -> torch.Tensor:
        return self.loss(za, zb)
