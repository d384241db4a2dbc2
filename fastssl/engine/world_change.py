"""Resuming on another number of ranks than the checkpoint was written with.

What carries over, and how:
- **Model, optimizer, LR schedule, step counters**: with ZeRO stage 0 nothing is sharded (rank 0
  writes the whole module and optimizer state), so DeepSpeed loads them on any rank count. ZeRO
  stages 1-3 shard the optimizer (and stage 3 the parameters) by rank; resuming those on another
  rank count is refused with one line (DeepSpeed's universal-checkpoint conversion is not wired in).
- **Global batch**: kept. ``optim.batch_size`` is per rank, so ``optim.grad_accum`` is set to
  ``global_batch / (batch_size × ranks)``; the step plan, LR and schedule stay those of the run.
  If that is not a whole number, one line says which batch sizes would work.
- **Data position**, at the level of global samples: the checkpoint's position in the epoch
  (``step_in_epoch`` optimizer steps = ``step_in_epoch × global_batch`` samples) is skipped in the
  new loader, so the epoch ends where it would have and the epoch count stays right. The per-rank
  DALI streams cannot be re-sharded, so the order of the rest of that epoch is the new loader's,
  not the interrupted one's (some images of that epoch may be seen twice, others not at all);
  every later epoch is a full pass as usual.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from fastssl.config import ConfigError, TrainConfig
from fastssl.engine.checkpoint import saved_shape

log = logging.getLogger("fastssl")


def _saved_global_batch(folder: Path, shape: dict) -> int | None:
    if "global_batch" in shape:
        return int(shape["global_batch"])
    try:  # checkpoints from before shape.json: the run's DeepSpeed JSON two levels up
        return int(json.loads((folder.parent.parent / "deepspeed.json").read_text())["train_batch_size"])
    except (OSError, ValueError, KeyError):
        return None


def adapt(cfg: TrainConfig, folder: Path | None, world: int) -> TrainConfig:
    """The config to resume ``folder`` on ``world`` ranks (grad_accum adjusted), or ConfigError if it cannot be done."""
    if folder is None:
        return cfg
    shape = saved_shape(folder)
    saved = int(shape.get("world_size") or 0)
    if saved == world:
        return _same_rank_count(cfg, folder, shape, world)
    if saved == 0:
        return cfg
    stage = int(shape.get("zero_stage", cfg.engine.zero_stage))
    if stage != 0:
        raise ConfigError(
            f"checkpoint {folder} was written by {saved} ranks with ZeRO stage {stage}; resuming it on {world} ranks "
            f"is supported with ZeRO stage 0 only: resume on {saved} ranks"
        )
    global_batch = _saved_global_batch(folder, shape)
    micro = cfg.optim.batch_size
    if global_batch is None:
        raise ConfigError(f"checkpoint {folder} was written by {saved} ranks and does not record its global batch; resume on {saved} ranks")
    if global_batch % world:
        fits = [n for n in range(1, global_batch + 1) if global_batch % n == 0 and n <= 4 * max(saved, world)][:6]
        raise ConfigError(
            f"checkpoint {folder} was trained with a global batch of {global_batch} on {saved} ranks, which {world} ranks "
            f"cannot share evenly; resume on a rank count that divides {global_batch} (e.g. {', '.join(map(str, fits))})"
        )
    if global_batch % (micro * world):
        per_rank = global_batch // world
        best = max(d for d in range(1, min(micro, per_rank) + 1) if per_rank % d == 0)
        raise ConfigError(
            f"checkpoint {folder} was trained with a global batch of {global_batch} on {saved} ranks; on {world} ranks "
            f"optim.batch_size must divide {per_rank} (it is {micro}) to keep it: add optim.batch_size={best} to the "
            f"command (optim.grad_accum is then set to {per_rank // best})"
        )
    accum = global_batch // (micro * world)
    if accum != cfg.optim.grad_accum:
        log.warning("checkpoint %s was written by %d ranks, resuming on %d: optim.grad_accum %d -> %d keeps the global batch of %d",
                    folder, saved, world, cfg.optim.grad_accum, accum, global_batch)
    else:
        log.warning("checkpoint %s was written by %d ranks, resuming on %d (global batch %d kept)", folder, saved, world, global_batch)
    return cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"grad_accum": accum})})


def _same_rank_count(cfg: TrainConfig, folder: Path, shape: dict, world: int) -> TrainConfig:
    """The same rank count, but a checkpoint whose grad_accum was set by an earlier resume on another
    rank count (2 ranks → 1 made it 2): the same command again must resume, so grad_accum is set to
    keep the checkpoint's global batch again. Only with the checkpoint's own per-rank batch: the data
    position is kept per micro-batch, so another batch size is for the resume rules to refuse."""
    from fastssl.engine.resume_rules import saved_config

    global_batch = _saved_global_batch(folder, shape)
    micro, accum = cfg.optim.batch_size, cfg.optim.grad_accum
    if global_batch is None or global_batch == micro * accum * world or global_batch % (micro * world):
        return cfg
    old, _ = saved_config(folder)
    if not old or (old.get("optim") or {}).get("batch_size") != micro:
        return cfg
    keep = global_batch // (micro * world)
    log.warning("checkpoint %s keeps a global batch of %d: optim.grad_accum %d -> %d (set when it was resumed on "
                "another rank count)", folder, global_batch, accum, keep)
    return cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"grad_accum": keep})})


def skip_to(loader, state, grad_accum: int) -> int:
    """Advance a fresh train loader past the ``state.step_in_epoch`` optimizer steps already done
    in this epoch; returns the number of (per-rank) batches skipped."""
    skip = state.step_in_epoch * grad_accum
    it = iter(loader)
    for _ in range(skip):
        next(it)  # the loader counts it; an abandoned iterator leaves its position as it is
    return skip
