"""Atomic checkpoints of a DeepSpeed engine plus per-rank state (data loader position, RNG).

Layout: ``<output_dir>/checkpoints/step<N>/`` holds DeepSpeed's files and ``rank<R>.pt`` per rank.
Every rank writes into ``.tmp-step<N>/``; after a barrier rank 0 renames it to ``step<N>`` — the
rename is the commit, so a crash (even SIGKILL) at any moment leaves either a complete checkpoint or
a ``.tmp-*`` folder that the next save removes. Resuming picks the newest ``step*`` folder.
Assumes ``output_dir`` is on a file system every rank sees (as DeepSpeed's own resume does).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

_STEP_DIR = re.compile(r"^step(\d+)$")


@dataclass
class TrainState:
    """Where training stands; saved in DeepSpeed's client state."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    step_in_epoch: int = 0  # optimizer steps done within the current epoch


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def save(engine, root: Path, state: TrainState, rank_state: dict, *, keep: int, rank: int) -> Path:
    """Save everything needed to resume exactly; all ranks must call. Returns the final folder."""
    tag = f"step{state.global_step}"
    tmp_tag = f".tmp-{tag}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state={"train_state": asdict(state)}, save_latest=False)
    torch.save(rank_state, root / tmp_tag / f"rank{rank}.pt")
    _barrier()
    final = root / tag
    if rank == 0:
        if final.exists():  # the same step saved twice (e.g. SIGTERM right after a periodic save)
            shutil.rmtree(final)
        (root / tmp_tag).rename(final)
        for _, old in checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load(engine, folder: Path, rank: int) -> tuple[TrainState, dict]:
    """Load a checkpoint folder written by ``save`` into ``engine``; returns (state, this rank's state)."""
    _, client = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=True)
    if client is None:
        raise RuntimeError(f"could not load the DeepSpeed checkpoint in {folder}")
    rank_file = folder / f"rank{rank}.pt"
    if not rank_file.is_file():
        raise RuntimeError(f"{rank_file} is missing: was this checkpoint written with a different number of ranks?")
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
