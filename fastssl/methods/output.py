"""What a method's forward returns to the engine, and what the engine may call on a method."""
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
class HasEncoder(Protocol):
    """Methods expose the encoder that kNN evaluates and that is exported for downstream use."""

    encoder: nn.Module


@runtime_checkable
class AfterStep(Protocol):
    """Optional hook, called after every optimizer step with progress in [0, 1] (EMA/momentum updates)."""

    def after_optimizer_step(self, progress: float) -> None: ...
