"""The output directory: one run holds it at a time, and what it already holds is checked first.

Rules (also in README, "Resume"):
- **Exclusive.** Rank 0 takes an OS lock (``fcntl.flock``) on ``<output_dir>/.fastssl.lock`` and
  keeps it until the process ends; the kernel drops it on any exit, ``kill -9`` included, so a
  stale lock never blocks a re-run. A second run on the same directory is refused at start with one
  line naming the holder's PID and host.
- **A fresh start moves the old run aside.** ``run.resume=never`` into a directory that holds a
  run moves its outputs (``RUN_OUTPUTS``) into ``<output_dir>/previous-<UTC time>/``: nothing of
  the earlier run (checkpoints above all) is left where a later ``run.resume=auto`` could pick it
  up, nothing is deleted, and files a run did not write are not touched.
- **Changed settings** on a resume are applied or refused key by key (``resume_rules.RULES``), in
  ``session.setup`` before anything is written.
- **A finished run stays finished.** ``finished.json`` is written at the very end (with the step
  count and steps per epoch); re-running with a config that asks for no more steps than were done
  says so and exits 0 without touching any output (a finished run's outputs change only by
  continuing it). A config asking for more steps continues from the newest checkpoint.

Errors are ``ConfigError`` (one line, exit 2); a finished run raises ``RunFinished`` (exit 0).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from fastssl.config import ConfigError, TrainConfig

log = logging.getLogger("fastssl")

LOCK_NAME = ".fastssl.lock"
FINISHED_NAME = "finished.json"
PREVIOUS_PREFIX = "previous-"

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


#: What a run writes into its output directory; a fresh start moves these aside and nothing else.
RUN_OUTPUTS = ("checkpoints", "config.yaml", "deepspeed.json", "metrics.jsonl", "tensorboard", "curves.png",
               "knn_init.json", "summary.json", "encoder.pt", "encoder.json", FINISHED_NAME)


def _ours(p: Path) -> bool:
    return p.name in RUN_OUTPUTS or p.name.endswith(".tmp") or p.name.startswith(".curves.tmp")


def _move_aside(out: Path) -> Path | None:
    """Move the run's own outputs (``RUN_OUTPUTS``) into ``previous-<UTC time>``.

    Only what a run writes is moved: an output directory that also holds other files (a folder of
    the user's, given as run.output_dir by mistake) keeps them where they are, untouched."""
    entries = [p for p in out.iterdir() if _ours(p)]
    foreign = [p.name for p in out.iterdir() if not _ours(p) and p.name != LOCK_NAME
               and not p.name.startswith((PREVIOUS_PREFIX, "."))]
    if foreign:
        log.warning("run.output_dir %s also holds %d entries fastssl did not write (e.g. %s): left where they are",
                    out, len(foreign), ", ".join(sorted(foreign)[:3]))
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


def _asked_steps(cfg: TrainConfig, record: dict) -> int | None:
    """The step count this config asks for, as far as it can be known before the data is scanned."""
    if cfg.optim.max_steps is not None:
        return cfg.optim.max_steps
    spe = record.get("steps_per_epoch")
    return cfg.optim.epochs * int(spe) if spe else None


def _finished(out: Path, cfg: TrainConfig) -> None:
    """RunFinished when ``out`` holds a finished run that this config would not continue (exit 0, no
    output changes); ConfigError when the config also changes a setting, which without a step to
    train it could not be honoured."""
    try:
        record = json.loads((out / FINISHED_NAME).read_text())
    except (OSError, ValueError):
        return
    from fastssl.engine.checkpoint import checkpoints

    found = checkpoints(out / "checkpoints")
    steps = record.get("steps")
    if not (found and found[-1][0] == steps):
        return  # the record does not describe the newest checkpoint: let the resume rules decide
    now = _comparable(cfg.model_dump(mode="json"))
    asked = _asked_steps(cfg, record)
    if asked is None:  # a record from before steps_per_epoch was kept: only the very same config is "finished"
        if record.get("config") == now:
            raise RunFinished(f"{out} holds this run, finished at step {steps}; outputs left unchanged "
                              "(to train more, raise optim.max_steps or optim.epochs; to start over, run.resume=never)")
        return
    if asked > steps:
        return  # continuing: the resume rules apply
    from fastssl.engine.resume_rules import real_changes

    diff = {k: v for k, v in real_changes(record.get("config") or {}, cfg).items()
            if k not in ("optim.max_steps", "optim.epochs") and k not in _VOLATILE}
    if diff:  # a setting this run would not honour, and no step to train with it: refused
        key, (before, after) = next(iter(diff.items()))
        more = f" (also changed: {', '.join(list(diff)[1:4])})" if len(diff) > 1 else ""
        raise ConfigError(
            f"{out} holds a run finished at step {steps} with {key}={before} (this config: {after}){more}; a finished run "
            f"changes only by continuing it (more steps, under the resume rules): use another run.output_dir, or "
            f"run.resume=never to move it aside and start fresh"
        )
    if asked == steps:  # the very same run
        raise RunFinished(f"{out} holds this run, finished at step {steps}; outputs left unchanged "
                          "(to train more, raise optim.max_steps or optim.epochs; to start over, run.resume=never)")
    raise RunFinished(
        f"{out} holds this run, finished at step {steps}; this config asks for {asked} steps, so nothing is trained and "
        f"outputs left unchanged (a finished run changes only by continuing: raise optim.max_steps or optim.epochs; "
        f"to start over, run.resume=never)"
    )


def _prepare_main(cfg: TrainConfig) -> Path | None:
    """Rank 0's part: create + lock, then apply the rules above. Returns the folder things were moved to."""
    from fastssl.config_paths import overlap_problem

    out = Path(cfg.run.output_dir)
    overlap = None if cfg.data.synthetic else overlap_problem(out, cfg.data.root)  # again: a symlink may have changed since the config was read
    if overlap:
        raise ConfigError(overlap)
    from fastssl.engine import disk

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if disk.is_disk_full(err, out):
            raise disk.DiskFull(out) from None
        raise ConfigError(f"run.output_dir {out} cannot be created ({err.strerror}); choose a writable folder") from None
    try:
        acquire_lock(out)
    except OSError as err:  # e.g. a read-only file system
        if disk.is_disk_full(err, out):
            raise disk.DiskFull(out / LOCK_NAME) from None
        raise ConfigError(f"run.output_dir {out} is not writable ({err.strerror}); choose another run.output_dir") from None
    if cfg.run.resume == "never":
        with disk.written(out / f"{PREVIOUS_PREFIX}…"):  # a rename needs no space, the new folder does
            return _move_aside(out)
    if cfg.run.resume == "auto":
        _finished(out, cfg)
    return None


def unfinish(out: Path) -> None:
    """Rank 0, once every check passed: training will change the outputs, so the run is no longer finished."""
    (Path(out) / FINISHED_NAME).unlink(missing_ok=True)


def prepare(cfg: TrainConfig, rank: int) -> Path | None:
    """Create, lock and check ``run.output_dir`` before any work; every rank gets the same outcome.

    Rank 0 decides; the result (or the one-line error) is broadcast so that no rank is left waiting
    in a collective. Returns where an earlier run was moved to (``run.resume=never``), else None.
    """
    import torch.distributed as dist

    from fastssl.engine.disk import DiskFull

    outcome: tuple[str, object] = ("ok", None)
    if rank == 0:
        try:
            outcome = ("ok", _prepare_main(cfg))
        except (ConfigError, RunFinished, DiskFull) as err:
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
    if kind == "DiskFull":
        raise DiskFull(Path(cfg.run.output_dir), message=value)
    return value  # type: ignore[return-value]


def mark_finished(cfg: TrainConfig, steps: int, steps_per_epoch: int | None = None) -> None:
    """Rank 0, after the last output is written: record that this config finished at ``steps``."""
    from fastssl.engine import disk

    out = Path(cfg.run.output_dir)
    record = {"steps": steps, "steps_per_epoch": steps_per_epoch, "config": _comparable(cfg.model_dump(mode="json"))}
    disk.atomic_write_json(out / FINISHED_NAME, record)
