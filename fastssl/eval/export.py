"""Export the encoder as a plain state_dict that timm loads with ``strict=True``.

ViT: ``timm.create_model(arch, img_size=..., patch_size=..., num_classes=0).load_state_dict(sd, strict=True)``.
ResNet: ``timm.create_model(arch, num_classes=0)`` loads it directly with the standard stem. With
``model.small_stem`` the stem conv has another shape (3×3 instead of 7×7), which no timm keyword
expresses; the encoder's ``export_spec()`` is written beside the weights (``encoder.json``) and
``load_timm_encoder(path)`` builds the timm model, applies the same stem surgery
(``fastssl.models.resnet.small_stem_``) and loads with ``strict=True``. The weights stay a plain
timm state_dict either way (no renaming, no wrapper prefix).
"""
from __future__ import annotations

import json
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


def export_spec(encoder: nn.Module) -> dict | None:
    """How to rebuild ``encoder`` in timm (``ResNetTaps.export_spec()``), None when the name suffices."""
    spec = getattr(encoder, "export_spec", None)
    return spec() if callable(spec) else None


def save_encoder(state_dict: dict[str, torch.Tensor], path: Path, spec: dict | None = None) -> Path:
    """Write atomically (temporary file + rename); ``spec``, when given, to ``path`` with suffix .json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec is not None:
        side = path.with_suffix(".json")
        side.with_name(side.name + ".tmp").write_text(json.dumps(spec, indent=1))
        os.replace(side.with_name(side.name + ".tmp"), side)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state_dict, tmp)
    os.replace(tmp, path)
    return path


def load_timm_encoder(path: Path, **create_kwargs) -> nn.Module:
    """The exported ResNet encoder as a timm model (``num_classes=0``), loaded with ``strict=True``.

    Needs the ``encoder.json`` written beside ``path`` (arch, small_stem)."""
    import fastssl  # noqa: F401  (torchvision shim before timm)
    import timm

    from fastssl.models.resnet import small_stem_

    spec = json.loads(Path(path).with_suffix(".json").read_text())
    model = timm.create_model(spec["arch"], num_classes=0, **create_kwargs)
    if spec.get("small_stem"):
        small_stem_(model)
    model.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
    return model
