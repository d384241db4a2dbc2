"""Export the encoder as a plain state_dict that timm loads with ``strict=True``.

``timm.create_model(arch, img_size=..., patch_size=..., num_classes=0).load_state_dict(sd, strict=True)``
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def encoder_state_dict(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """fp32 CPU copy of the encoder's weights; gathers ZeRO-3 partitions first when present."""
    params = list(encoder.parameters())
    if any(hasattr(p, "ds_id") for p in params):  # partitioned by ZeRO stage 3
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in encoder.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in encoder.state_dict().items()}


def save_encoder(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """Write atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state_dict, tmp)
    os.replace(tmp, path)
    return path
