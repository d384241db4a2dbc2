"""What a method's forward and after-step hook know about where training stands."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class StepContext:
    """The optimizer step being taken (0-based ``step``: steps done before this one).

    ``epoch`` is fractional (``step / steps_per_epoch``), so schedules such as DAC's
    λ = 0.24·0.996^epoch or SwAV's frozen prototypes need no loader state. ``micro_step`` counts
    the micro-batches of this step under gradient accumulation.
    """

    step: int
    steps_per_epoch: int
    total_steps: int
    seed: int
    micro_step: int = 0

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of training done before this step, in [0, 1)."""
        return self.step / self.total_steps

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator seeded by (run seed, step, micro-step): the same numbers on every rank
        and after a resume, and independent of the global RNG (data order, dropout)."""
        seed = int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.step, self.micro_step]).generate_state(1, np.uint64)[0])
        g = torch.Generator(device=device)
        g.manual_seed(seed & ((1 << 63) - 1))
        return g
