"""Atomic checkpoints of a DeepSpeed engine plus per-rank state (data loader position, RNG).

Layout: ``<output_dir>/checkpoints/step<N>/`` holds DeepSpeed's files and ``rank<R>.pt`` per rank.
Every rank writes into ``.tmp-step<N>/``; after a barrier rank 0 renames it to ``step<N>`` — the
rename is the commit, so a crash (even SIGKILL) at any moment leaves either a complete checkpoint or
a ``.tmp-*`` folder that the next save removes. Resuming picks the newest ``step*`` folder.
Assumes ``output_dir`` is on a file system every rank sees (as DeepSpeed's own resume does).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from fastssl.engine import disk
from fastssl.engine.disk import STEP_DIR, checkpoints  # the listing sits in disk: DiskFull names the last one

SHAPE_FILE = "shape.json"


@dataclass
class TrainState:
    """Where training stands; saved in DeepSpeed's client state."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    step_in_epoch: int = 0  # optimizer steps done within the current epoch


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save(engine, root: Path, state: TrainState, rank_state: dict, *, keep: int, rank: int,
         records: dict[str, str] | None = None) -> Path:
    """Save everything needed to resume exactly; all ranks must call. Returns the final folder.

    ``records``: {file name: text} rank 0 writes into the checkpoint as well (the config it was
    trained with, the data fingerprint), read back by ``resume_rules`` when it is resumed."""
    tag = f"step{state.global_step}"
    tmp_tag = f".tmp-{tag}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    final = root / tag
    failed: BaseException | None = None
    try:
        engine.save_checkpoint(str(root), tag=tmp_tag, client_state={"train_state": asdict(state)}, save_latest=False)
        torch.save(rank_state, root / tmp_tag / f"rank{rank}.pt")
        _write_shape(root / tmp_tag, rank, state, engine)
        if rank == 0:
            for name, text in (records or {}).items():
                (root / tmp_tag / name).write_text(text)
    except Exception as err:  # noqa: BLE001  (decided below, after every rank reports)
        failed = err
    if _any_rank(failed is not None):
        # Nothing of this checkpoint may survive: the .tmp folder goes, the last complete one stays.
        if rank == 0 or failed is not None:
            disk.remove_quietly(root / tmp_tag)
        previous = checkpoints(root)
        last = previous[-1][1] if previous else None
        if failed is not None and disk.is_disk_full(failed, root):
            raise disk.DiskFull(final, last) from None
        if failed is not None:
            raise failed
        raise RuntimeError(f"another rank failed while writing {final}; the last complete checkpoint is {last or 'none'}")
    _barrier()
    if rank == 0:
        if final.exists():  # the same step saved twice (e.g. SIGTERM right after a periodic save)
            shutil.rmtree(final)
        (root / tmp_tag).rename(final)
        for _, old in checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _any_rank(flag: bool) -> bool:
    """OR over ranks, so that a rank whose write failed does not leave the others waiting in a barrier."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _write_shape(folder: Path, rank: int, state: TrainState, engine) -> None:
    """Rank 0 records the rank count and global batch that wrote the checkpoint (read by ``world_change``)."""
    if rank != 0:
        return
    world = dist.get_world_size() if dist.is_initialized() else 1
    shape = {"world_size": world, "global_batch": int(engine.train_batch_size()), "global_step": state.global_step,
             "zero_stage": int(engine.zero_optimization_stage())}
    (folder / SHAPE_FILE).write_text(json.dumps(shape))


def saved_shape(folder: Path) -> dict:
    """``shape.json`` of a checkpoint; for checkpoints written before it existed, the rank count from the files."""
    try:
        return json.loads((Path(folder) / SHAPE_FILE).read_text())
    except (OSError, ValueError):
        return {"world_size": len(list(Path(folder).glob("rank*.pt")))}


def saved_step(folder: Path) -> int:
    """The optimizer step a checkpoint was taken at (``shape.json``, else the ``step<N>`` folder name)."""
    shape = saved_shape(folder)
    if "global_step" in shape:
        return int(shape["global_step"])
    m = STEP_DIR.match(Path(folder).name)
    return int(m.group(1)) if m else 0


def load(engine, folder: Path, rank: int) -> tuple[TrainState, dict | None]:
    """Load a checkpoint folder written by ``save`` into ``engine``; returns (state, this rank's state).

    This rank's state (data position, RNG) is None when the checkpoint was written by another number
    of ranks: the per-rank data streams do not carry over, ``world_change.skip_to`` takes their place.
    """
    _, client = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=True)
    if client is None:
        raise RuntimeError(f"could not load the DeepSpeed checkpoint in {folder}")
    world = dist.get_world_size() if dist.is_initialized() else 1
    if saved_shape(folder).get("world_size") != world:
        return TrainState(**client["train_state"]), None
    rank_file = folder / f"rank{rank}.pt"
    if not rank_file.is_file():
        raise RuntimeError(f"{rank_file} is missing: the checkpoint is incomplete; resume from an earlier one with run.resume=<folder>")
    return TrainState(**client["train_state"]), torch.load(rank_file, weights_only=False)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
