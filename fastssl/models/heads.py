"""Projection / prediction MLP heads shared by the methods."""
from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from fastssl.config_base import Section


class HeadConfig(Section):
    hidden_dim: int = Field(2048, ge=1, description="Width of the hidden layers.")
    out_dim: int = Field(128, ge=1, description="Output (embedding) dimension; SimCLR/DCL use 128.")
    num_layers: int = Field(2, ge=1, description="Linear layers in total (SimCLR v1: 2, SimCLR v2 / MoCo v3: 3).")
    norm: Literal["batchnorm", "layernorm", "none"] = Field(
        "batchnorm", description="Normalisation after each hidden linear layer (LayerNorm: the Masked MoCo/BYOL heads)."
    )
    last_norm: bool = Field(False, description="Also normalise the output (affine-free), as MoCo v3's projector does.")


def _norm(kind: str, dim: int, affine: bool = True) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm1d(dim, affine=affine)
    if kind == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=affine)
    return nn.Identity()


class MLPHead(nn.Module):
    """[B, in_dim] → [B, out_dim]: (Linear → Norm → ReLU) × (num_layers − 1) → Linear [→ Norm].

    Linear layers followed by a norm carry no bias (the norm's shift makes it redundant).
    Layers are named ``fc<i>`` / ``norm<i>`` / ``act<i>``.
    """

    def __init__(self, in_dim: int, cfg: HeadConfig):
        super().__init__()
        layers: list[tuple[str, nn.Module]] = []
        dim = in_dim
        with_norm = cfg.norm != "none"
        for i in range(cfg.num_layers - 1):
            layers += [
                (f"fc{i}", nn.Linear(dim, cfg.hidden_dim, bias=not with_norm)),
                (f"norm{i}", _norm(cfg.norm, cfg.hidden_dim)),
                (f"act{i}", nn.ReLU(inplace=True)),
            ]
            dim = cfg.hidden_dim
        last = cfg.num_layers - 1
        layers.append((f"fc{last}", nn.Linear(dim, cfg.out_dim, bias=not (with_norm and cfg.last_norm))))
        if cfg.last_norm:
            layers.append((f"norm{last}", _norm(cfg.norm, cfg.out_dim, affine=False)))
        self.net = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
