"""Masked MoCo (masked_moco_byol.txt): MoCo v3 with the online view cut into n chunks (default 8),
each encoded as its own image, the loss averaged over the n queries (eq. 3), an optional
spherical-mean key over m target chunks (eq. 4), LayerNorm heads and optional class attention.

The loss is MoCo v3's, reused: 2τ·[ctr(q₁, k₂) + ctr(q₂, k₁)] with InfoNCE over the keys of the
global batch, τ = 0.2; the 2τ factor follows the official MoCo v3 code (see ``mocov3.py``). The
paper builds on MoCo v3 and says nothing else about the loss, so MoCo v3's choices stand. The
chunking, heads, target and κ monitor live in ``masked.py``.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fastssl.methods.masked import MaskedSiamese, MaskingFields
from fastssl.methods.mocov3 import symmetric_info_nce
from fastssl.ops.dispatch import Backend


class MMoCoConfig(MaskingFields):
    name: Literal["mmoco"] = "mmoco"
    temperature: float = Field(0.2, gt=0, description="τ of InfoNCE (MoCo v3's 0.2 for ViT).")
    gather_distributed: bool = Field(True, description="Keys from all ranks (the global batch).")
    backend: Backend = Field("auto", description="Contrastive op implementation.")


class MMoCo(MaskedSiamese):
    Config = MMoCoConfig

    def loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q ``[n, 2B, P]`` chunk queries, k ``[2B, P]`` keys (no gradient), view-major."""
        c = self.cfg
        return symmetric_info_nce(q, k, c.temperature, gather_distributed=c.gather_distributed, backend=c.backend)
