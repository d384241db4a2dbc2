"""The output directory: one run holds it at a time, and what it already holds is checked first.

Rules (also in README, "Resume"):
- **Exclusive.** Rank 0 takes an OS lock (``fcntl.flock``) on ``<output_dir>/.fastssl.lock`` and
  keeps it until the process ends; the kernel drops it on any exit, ``kill -9`` included, so a
  stale lock never blocks a re-run. A second run on the same directory is refused at start with one
  line naming the holder's PID and host.
- **A fresh start moves the old run aside.** ``run.resume=never`` into a directory that holds
  anything moves all of it into ``<output_dir>/previous-<UTC time>/``: nothing of the earlier run
  (checkpoints above all) is left where a later ``run.resume=auto`` could pick it up, and nothing is
  deleted.
- **Same run or refuse.** Resuming (``auto`` or a folder) into a directory holding checkpoints of a
  run with another ``model.arch`` / ``optim.batch_size`` / ``run.seed`` (or the other keys in
  ``IDENTITY``) is refused with one line saying how to proceed.
- **A finished run stays finished.** ``finished.json`` is written at the very end; re-running the
  same config says so and exits 0 without touching any output. A changed config (e.g. more steps)
  continues from the newest checkpoint as usual.

Errors are ``ConfigError`` (one line, exit 2); a finished run raises ``RunFinished`` (exit 0).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

import yaml

from fastssl.config import ConfigError, TrainConfig

LOCK_NAME = ".fastssl.lock"
FINISHED_NAME = "finished.json"
PREVIOUS_PREFIX = "previous-"

#: Keys whose change makes an output directory's checkpoints unusable or mixes two runs' curves.
IDENTITY = ("model.arch", "model.patch_size", "model.img_size", "data.image_size", "method.name",
            "optim.batch_size", "run.seed")
#: Keys that do not change what a run computes; ignored when deciding whether a run is "the same, finished".
_VOLATILE = ("run.resume", "run.output_dir", "engine.progress", "engine.log_every_steps")

_held: list = []  # open lock files; kept referenced for the life of the process (closing drops the lock)


class RunFinished(Exception):
    """The output directory holds this very run, finished; nothing was changed."""


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _comparable(cfg_tree: dict) -> dict:
    tree = json.loads(json.dumps(cfg_tree, default=str))
    for dotted in _VOLATILE:
        *parents, last = dotted.split(".")
        node = _get(tree, ".".join(parents)) if parents else tree
        if isinstance(node, dict):
            node.pop(last, None)
    return tree


def acquire_lock(out: Path):
    """Lock ``out`` for this process (non-blocking); ConfigError naming the holder if another run has it."""
    path = out / LOCK_NAME
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown pid on an unknown host"
        f.close()
        raise ConfigError(
            f"run.output_dir {out} is in use by another run ({holder}); wait for it to end or choose another run.output_dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
    f.flush()
    _held.append(f)
    return f


def release_lock(f) -> None:
    """Drop a lock taken by ``acquire_lock`` (tests; a run keeps it until it exits)."""
    if f in _held:
        _held.remove(f)
    f.close()


def _has_checkpoints(out: Path) -> bool:
    from fastssl.engine.checkpoint import checkpoints

    return bool(checkpoints(out / "checkpoints"))


def _move_aside(out: Path) -> Path | None:
    """Move everything but the lock and earlier ``previous-*`` folders into ``previous-<UTC time>``."""
    entries = [p for p in out.iterdir() if p.name != LOCK_NAME and not p.name.startswith(PREVIOUS_PREFIX)]
    if not entries:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest, n = out / f"{PREVIOUS_PREFIX}{stamp}", 1
    while dest.exists():
        n += 1
        dest = out / f"{PREVIOUS_PREFIX}{stamp}-{n}"
    dest.mkdir()
    for p in entries:
        shutil.move(str(p), str(dest / p.name))
    return dest


def _check_identity(out: Path, cfg: TrainConfig) -> None:
    saved = out / "config.yaml"
    try:
        old = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # no readable record of the earlier run: nothing to compare (its checkpoints still load or fail loudly)
    new = cfg.model_dump(mode="json")
    for key in IDENTITY:
        before, now = _get(old, key), _get(new, key)
        if before != now:
            raise ConfigError(
                f"run.output_dir {out} holds a run with {key}={before} (this config: {now}); use another "
                f"run.output_dir, or run.resume=never to move that run aside and start fresh"
            )


def _prepare_main(cfg: TrainConfig) -> Path | None:
    """Rank 0's part: create + lock, then apply the rules above. Returns the folder things were moved to."""
    from fastssl.engine.run_paths import overlap_problem

    out = Path(cfg.run.output_dir)
    overlap = overlap_problem(out, cfg.data.root)  # again: a symlink may have changed since the config was read
    if overlap:
        raise ConfigError(overlap)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"run.output_dir {out} cannot be created ({err.strerror}); choose a writable folder") from None
    try:
        acquire_lock(out)
    except OSError as err:  # e.g. a read-only file system
        raise ConfigError(f"run.output_dir {out} is not writable ({err.strerror}); choose another run.output_dir") from None
    finished = out / FINISHED_NAME
    if cfg.run.resume == "never":
        return _move_aside(out)
    if _has_checkpoints(out):
        _check_identity(out, cfg)
    if cfg.run.resume == "auto" and finished.is_file():
        try:
            record = json.loads(finished.read_text())
        except (OSError, ValueError):
            record = {}
        from fastssl.engine.checkpoint import checkpoints

        found = checkpoints(out / "checkpoints")
        same = record.get("config") == _comparable(cfg.model_dump(mode="json"))
        if same and found and found[-1][0] == record.get("steps"):
            raise RunFinished(
                f"{out} holds this run, finished at step {record['steps']}; outputs left unchanged "
                f"(to train more, raise optim.max_steps or optim.epochs; to start over, run.resume=never)"
            )
    finished.unlink(missing_ok=True)  # training will change the outputs: the run is no longer finished
    return None


def prepare(cfg: TrainConfig, rank: int) -> Path | None:
    """Create, lock and check ``run.output_dir`` before any work; every rank gets the same outcome.

    Rank 0 decides; the result (or the one-line error) is broadcast so that no rank is left waiting
    in a collective. Returns where an earlier run was moved to (``run.resume=never``), else None.
    """
    import torch.distributed as dist

    outcome: tuple[str, object] = ("ok", None)
    if rank == 0:
        try:
            outcome = ("ok", _prepare_main(cfg))
        except (ConfigError, RunFinished) as err:
            outcome = (type(err).__name__, str(err))
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [outcome]
        dist.broadcast_object_list(box, src=0)
        outcome = box[0]
    kind, value = outcome
    if kind == "ConfigError":
        raise ConfigError(value)
    if kind == "RunFinished":
        raise RunFinished(value)
    return value  # type: ignore[return-value]


def mark_finished(cfg: TrainConfig, steps: int) -> None:
    """Rank 0, after the last output is written: record that this config finished at ``steps``."""
    out = Path(cfg.run.output_dir)
    tmp = out / f".{FINISHED_NAME}.tmp"
    tmp.write_text(json.dumps({"steps": steps, "config": _comparable(cfg.model_dump(mode="json"))}, indent=1))
    tmp.replace(out / FINISHED_NAME)
