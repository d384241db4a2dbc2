"""The one list of methods. Adding a method touches its file, this list and its configs.

The config's ``method:`` union and ``build_method`` come from ``METHODS``; the engine never names
a method.
"""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field
from torch import nn

from fastssl.config_base import ConfigError
from fastssl.methods.accel import Accel
from fastssl.methods.byol import BYOL
from fastssl.methods.can import CAN
from fastssl.methods.dac import DAC
from fastssl.methods.mae import MAE
from fastssl.methods.mbyol import MBYOL
from fastssl.methods.mmoco import MMoCo
from fastssl.methods.mocov2 import MoCoV2
from fastssl.methods.mocov3 import MoCoV3
from fastssl.methods.simclr import SimCLR
from fastssl.methods.simsiam import SimSiam
from fastssl.methods.swav import SwAV

METHODS: tuple[type[nn.Module], ...] = (SimCLR, BYOL, SimSiam, MoCoV3, MMoCo, MBYOL, MAE, CAN, DAC, MoCoV2, SwAV)


def method_names() -> list[str]:
    return [m.Config.model_fields["name"].default for m in METHODS]


def method_config_union():
    """``Annotated[Union[...], discriminator="name"]`` of every registered method's config."""
    return Annotated[Union[tuple(m.Config for m in METHODS)], Field(discriminator="name")]


def build_method(cfg) -> nn.Module:
    """The configured method around the encoder ``cfg.model`` names (a ``TrainConfig``): a
    ``PackedViT`` or a ``ResNetTaps`` (``fastssl.models.encoder.build_encoder``); wrapped in
    ``Accel`` when the method's config sets ``accel``."""
    from fastssl.models.encoder import build_encoder

    encoder = build_encoder(cfg.model, cfg.data.image_size)
    for method in METHODS:
        if isinstance(cfg.method, method.Config):
            try:
                built = method(cfg.method, encoder)
                if getattr(cfg.method, "accel", None) is not None:  # SimCLR, MoCo v2, SwAV: a loss per stage
                    built = Accel(built, cfg.method.accel)
                return built
            except ValueError as err:  # a method refusing its settings for this encoder (e.g. DAC's
                raise ConfigError(str(err)) from err  # mask ratio on this grid): one line, exit code 2
    raise TypeError(f"no registered method takes {type(cfg.method).__name__}")
