"""The contract between the engine and a method: what a method returns and what the engine may call.

A method is an ``nn.Module`` with

    Config                                   its pydantic section (``name: Literal["..."]``)
    __init__(cfg, encoder)                   builds its heads around the given encoder
    encoder                                  what kNN, the linear probe and export use
    crops() -> tuple[CropSpec, ...]          what the data pipeline makes for it
    forward(batch, ctx) -> StepOutput        loss + detached metrics
    param_groups() -> list[ParamGroup]       per-group LR scale / fixed LR (``param_groups.py``)
    after_step(ctx)                          optional: EMA targets, after every optimizer step

The engine never names a method; it talks to this protocol only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class StepOutput:
    """``loss``: the scalar to back-propagate. ``metrics``: detached scalars for the logs only."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Method(Protocol):
    encoder: nn.Module

    def crops(self) -> tuple: ...

    def param_groups(self) -> list: ...

    def forward(self, batch, ctx) -> StepOutput: ...


@runtime_checkable
class AfterStep(Protocol):
    """Optional hook, called after every optimizer step with that step's context (EMA/momentum updates)."""

    def after_step(self, ctx) -> None: ...
