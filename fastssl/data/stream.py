"""The epoch / step protocol of a training source, shared by ``TrainLoader`` (DALI) and ``SyntheticLoader``.

A training source yields ``Batch`` objects, ``len(source)`` of them per epoch. Each ``for`` loop yields
the rest of the current epoch and then counts it done (``epoch`` += 1, ``step`` = 0); ``step`` counts
the batches yielded in the current epoch and is advanced *before* a batch is yielded, so a state taken
between two batches means "after this batch". ``state_dict`` carries the counters and a fingerprint of
the arguments that shape the stream; ``load_state_dict`` refuses a state whose fingerprint differs.
A subclass says how a batch is made (``_next_batch``), what else it fingerprints and saves.

Nothing here imports DALI.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from fastssl.data.batch import Batch
from fastssl.data.config import DataConfig
from fastssl.data.crops import CropSpec, check_crops


def check_shard(rank: int, world_size: int, batch_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


class EpochStream:
    """The fields and the iteration / resume protocol common to the training sources (module docstring)."""

    what = "loader"  # how state errors name the source

    def __init__(self, cfg: DataConfig, *, batch_size: int, rank: int, world_size: int,
                 device: torch.device | str, seed: int, crops: Sequence[CropSpec]):
        check_shard(rank, world_size, batch_size)
        self.cfg = cfg
        self.crops = check_crops(crops)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.seed = seed
        self.class_names: list[str] = []
        self.steps_per_epoch = 0
        self.epoch = 0  # epochs completed
        self.step = 0  # batches yielded in the current epoch

    def _set_epoch_length(self, images: int, images_desc: str, steps_per_epoch: int | None) -> None:
        """``floor(floor(images / world_size) / batch_size)`` steps, the same on every rank, unless
        ``steps_per_epoch`` is given; a source that cannot fill one batch per rank is an error."""
        full_steps = (images // self.world_size) // self.batch_size
        if full_steps == 0:
            raise ValueError(f"{images_desc} cannot fill one batch of {self.batch_size} on each of {self.world_size} ranks")
        self.steps_per_epoch = full_steps if steps_per_epoch is None else int(steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _next_batch(self) -> Batch:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch: all of it normally, fewer batches after a resume or an
        interrupted loop, none if the last state was taken after the epoch's last batch."""
        while self.step < self.steps_per_epoch:
            batch = self._next_batch()
            self.step += 1  # counted before yielding: a state saved now is "after this batch"
            yield batch
        self.epoch, self.step = self.epoch + 1, 0

    def _fingerprint(self) -> dict:
        """The arguments that shape the stream; a subclass adds what describes its source."""
        return {"batch_size": self.batch_size, "rank": self.rank, "world_size": self.world_size, "seed": self.seed,
                "image_size": self.cfg.image_size, "steps_per_epoch": self.steps_per_epoch,
                "crops": [repr(c) for c in self.crops]}

    def _restore_counters(self, state: dict) -> None:
        """Check ``state``'s fingerprint against this stream's, then take its epoch / step counters."""
        mine, theirs = self._fingerprint(), state["fingerprint"]
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            raise ValueError(f"{self.what} state does not match this loader (saved, now): {diff}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
