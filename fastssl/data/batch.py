"""The training batch: every crop a method asked for, by name, plus labels and instance ids."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch


@dataclass(frozen=True)
class Batch:
    """``B`` images of one rank's micro-batch, on the loader's device.

    crops   crop name -> ``[count, B, 3, S, S]`` float32, normalised (``S`` per crop)
    labels  ``[B]`` int64 class ids (monitoring and tests only; SSL never reads them)
    index   ``[B]`` int64 position of each image in the scanned train list (instance id)
    """

    crops: Mapping[str, torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.crops[name]
        except KeyError:
            raise KeyError(f"the batch has no crop {name!r} (it has {sorted(self.crops)}); does the method's crops() declare it?") from None

    @property
    def size(self) -> int:
        return int(self.index.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.crops.items()},
            self.labels.to(device, non_blocking=non_blocking), self.index.to(device, non_blocking=non_blocking),
        )
