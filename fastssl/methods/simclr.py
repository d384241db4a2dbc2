"""SimCLR with the NT-Xent, DCL or DCLW loss (dcl.txt).

Both views go through the encoder and projector in one call, so the projector's BatchNorm sees the
2B embeddings together, as in SimCLR's reference implementation. On several CUDA ranks the norms
become SyncBatchNorm (SimCLR's "global BN"); on CPU they stay local because SyncBatchNorm has no
CPU implementation.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fastssl import ops
from fastssl.config_base import Section
from fastssl.models.heads import HeadConfig, MLPHead
from fastssl.methods.output import StepOutput


class SimCLRConfig(Section):
    name: Literal["simclr"] = "simclr"
    loss: Literal["nt_xent", "dcl", "dclw"] = Field("dcl", description="nt_xent: SimCLR; dcl: decoupled (eq. 5); dclw: weighted (eq. 6).")
    temperature: float = Field(0.1, gt=0, description="τ; the DCL paper uses 0.1 on ImageNet, 0.07 on CIFAR/STL.")
    weight_sigma: float = Field(0.5, gt=0, description="σ of the DCLW weight (loss=dclw only); the paper's choice is 0.5.")
    gather_distributed: bool = Field(True, description="Negatives from all ranks (the global batch), as SimCLR does.")
    backend: Literal["auto", "reference", "triton"] = Field("auto", description="Contrastive op implementation.")
    head: HeadConfig = Field(default_factory=HeadConfig)


class SimCLR(nn.Module):
    """encoder [B,3,H,W] → [B,E]; projector [B,E] → [B,out_dim]; loss on the two views' projections."""

    def __init__(self, encoder: nn.Module, cfg: SimCLRConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = MLPHead(encoder.num_features, cfg.head)

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.loss == "nt_xent":
            return ops.nt_xent(z1, z2, c.temperature, gather_distributed=c.gather_distributed, backend=c.backend)
        sigma = c.weight_sigma if c.loss == "dclw" else None
        return ops.dcl(z1, z2, c.temperature, weight_sigma=sigma, gather_distributed=c.gather_distributed, backend=c.backend)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> StepOutput:
        """view1, view2: [B,3,H,W] (any float dtype; cast to the parameters' dtype here)."""
        dtype = self.projector.net.fc0.weight.dtype  # bf16/fp16 under DeepSpeed mixed precision
        z = self.projector(self.encoder(torch.cat([view1, view2]).to(dtype)))
        z1, z2 = z.chunk(2)
        loss = self.loss(z1, z2)
        with torch.no_grad():
            n1, n2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
            metrics = {
                "pos_cosine": (n1 * n2).sum(1).mean(),
                # Collapse monitor: per-dimension std of normalised embeddings; 1/sqrt(D) when spread out, 0 when collapsed.
                "z_std": n1.std(dim=0).mean(),
            }
        return StepOutput(loss=loss, metrics=metrics)
