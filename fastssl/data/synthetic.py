"""``data.synthetic: true``: random training batches made on the training device.

What it is for: measuring the trainer (engine, method, optimizer, logging, checkpoints) without
the data pipeline, and running it where DALI or a data set is absent (a bare GPU machine), as
timm's benchmark script does with its random inputs. It is a drop-in for ``TrainLoader``: the same
iteration protocol (``len`` steps per epoch, a ``for`` loop yields the rest of the epoch), the
same ``Batch`` (every crop the method declares, ``[count, B, 3, S, S]`` float32 at its own size
``S``) and the same ``state_dict`` / ``load_state_dict`` for checkpoints and resume.

The pixels are standard-normal noise (what normalised images look like to the model, in scale),
drawn on the device from a generator seeded by ``(seed, rank, epoch, step)``: the same run gives
the same batches, a resumed run gives the batches the uninterrupted one would have, and no host
work or host-to-device copy sits in the step. Labels are all zero: nothing may evaluate on them,
which the config enforces (``eval.enabled=false`` is required with ``data.synthetic=true``).

Nothing here imports DALI.
"""
from __future__ import annotations

from typing import Sequence

import torch

from fastssl.data.batch import Batch
from fastssl.data.config import DataConfig
from fastssl.data.crops import TWO_VIEWS, CropSpec
from fastssl.data.stream import EpochStream

_STATE_VERSION = 1
# Mixes (seed, rank, epoch, step) into one 63-bit generator seed (distinct primes: no easy collisions).
_MIX = (1_000_003, 8_191, 131_071, 1)


def step_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """The generator seed of one rank's batch ``step`` of ``epoch``."""
    return (seed * _MIX[0] * _MIX[1] * _MIX[2] + rank * _MIX[1] * _MIX[2] + epoch * _MIX[2] + step) % (2**63 - 1)


class SyntheticLoader(EpochStream):
    """``TrainLoader``'s interface over seeded random batches (see the module docstring).

    Epoch: ``floor(floor(data.synthetic_images / world_size) / batch_size)`` steps, unless
    ``steps_per_epoch`` is given, so epoch-based schedules (warm-up, cosine, EMA) behave as on the
    data set the synthetic source stands for. Iteration: ``EpochStream`` (``fastssl.data.stream``).
    """

    what = "synthetic loader"

    def __init__(
        self,
        cfg: DataConfig,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        seed: int = 0,
        steps_per_epoch: int | None = None,
        crops: Sequence[CropSpec] = TWO_VIEWS,
    ):
        super().__init__(cfg, batch_size=batch_size, rank=rank, world_size=world_size, device=device, seed=seed, crops=crops)
        self._set_epoch_length(cfg.synthetic_images, f"data.synthetic_images={cfg.synthetic_images}", steps_per_epoch)
        self.class_names = ["synthetic"]
        self._gen = torch.Generator(device=self.device)

    def sizes(self) -> dict[str, tuple[int, int]]:
        """crop name -> (count, side in pixels), as the batches carry them."""
        return {c.name: (c.count, c.size or self.cfg.image_size) for c in self.crops}

    def _next_batch(self) -> Batch:
        g = self._gen
        g.manual_seed(step_seed(self.seed, self.rank, self.epoch, self.step))
        b, dev = self.batch_size, self.device
        crops = {name: torch.randn((count, b, 3, side, side), generator=g, device=dev)
                 for name, (count, side) in self.sizes().items()}
        first = ((self.epoch * self.steps_per_epoch + self.step) * self.world_size + self.rank) * b
        index = torch.arange(first, first + b, device=dev, dtype=torch.int64) % self.cfg.synthetic_images
        return Batch(crops, torch.zeros(b, dtype=torch.int64, device=dev), index)

    def _fingerprint(self) -> dict:
        return {"synthetic_images": self.cfg.synthetic_images, **super()._fingerprint()}

    def state_dict(self) -> dict:
        return {"version": _STATE_VERSION, "synthetic": True, "epoch": self.epoch, "step": self.step,
                "fingerprint": self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if not state.get("synthetic") or state.get("version") != _STATE_VERSION:
            raise ValueError("this checkpoint was written with real data (or another synthetic version); "
                             "resume it with the data settings it was trained with")
        self._restore_counters(state)

    def close(self) -> None:
        pass
