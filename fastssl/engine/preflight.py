"""Set-up checks that need the data or the rank count: one line (exit 2) instead of a traceback later.

``prepare_data`` replaces a bare ``ensure_dataset`` call: rank 0 writes/scans the data set, every
rank then learns the outcome (so no rank waits in a barrier for a rank that failed), and the batch
arithmetic is checked against the number of usable training images before any model is built:
- the per-rank batch must fit in the per-rank share of the training set;
- ``optim.grad_accum`` must leave at least one optimizer step per epoch;
- a ``deepspeed.train_batch_size`` must equal batch_size × grad_accum × ranks;
- a kNN ``k`` larger than the memory bank is used as the bank size, and the log says so;
- ``train/`` and ``test/`` must have the same class names (labels are indices into them);
and returns the data set's fingerprint (``data_fingerprint``), which a resume compares with the
one recorded in the checkpoint.
"""
from __future__ import annotations

import logging
from pathlib import Path

from fastssl.config import ConfigError, TrainConfig

log = logging.getLogger("fastssl")


_DISK_FULL = "disk-full:"  # marks a broadcast error that is a full disk (exit 4), not a config error (exit 2)


def _broadcast_error(message: str | None) -> str | None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return message


def check_batches(cfg: TrainConfig, n_train: int, world: int) -> None:
    """ConfigError when the batch settings leave no step in an epoch for ``n_train`` usable images."""
    o = cfg.optim
    train_dir = Path(cfg.data.root) / "train"
    micro_steps = (n_train // world) // o.batch_size
    if micro_steps == 0:
        raise ConfigError(
            f"optim.batch_size={o.batch_size} on {world} rank(s) needs at least {o.batch_size * world} training images; "
            f"{train_dir} has {n_train} usable ones; lower optim.batch_size"
        )
    if micro_steps < o.grad_accum:
        raise ConfigError(
            f"optim.grad_accum={o.grad_accum} leaves no optimizer step in an epoch ({micro_steps} batch(es) of "
            f"{o.batch_size} per rank per epoch); lower optim.grad_accum to at most {micro_steps}"
        )
    from fastssl.config_deepspeed import check_batch_keys
    from fastssl.config_pairs import queue_problem

    queue = queue_problem(cfg, world)  # with the rank count: MoCo v2 gathers the keys of every rank
    if queue:
        raise ConfigError(queue)

    check_batch_keys(cfg.deepspeed, micro=o.batch_size, accum=o.grad_accum, world=world)


def note_knn_bank(cfg: TrainConfig, n_train: int) -> None:
    """Warn when a kNN k exceeds the memory bank (the kNN then uses every bank entry)."""
    bank = min(n_train, cfg.eval.train_samples or n_train)
    for k in sorted({cfg.eval.knn_k, *(p.k for p in cfg.eval.knn_extra)}):
        if k > bank:
            log.warning("eval: k=%d is larger than the kNN memory bank (%d train images): the kNN uses k=%d", k, bank, bank)


def data_fingerprint(splits: dict) -> dict:
    """What identifies the data a run trains and evaluates on: per split, the class names, the number
    of usable images and a digest of their relative paths and sizes (not their mtimes: a copy of the
    same files is the same data set)."""
    import hashlib
    import os

    out = {}
    for name, images in splits.items():
        h = hashlib.sha1()
        for f in images.files:
            rel = os.path.join(*Path(f).parts[-2:])
            h.update(f"{rel}\0{_size(f)}\0".encode())
        out[name] = {"classes": len(images.class_names), "images": len(images), "digest": h.hexdigest()[:16]}
    return out


def _size(path: str) -> int:
    import os

    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def prepare_data(cfg: TrainConfig, rank: int, world: int) -> tuple[int, dict]:
    """Prepare and scan the data set (rank 0), then check the batch arithmetic.

    Returns the usable train images and the data fingerprint."""
    from fastssl.data.files import scan_image_folder
    from fastssl.data.folder_checks import class_mismatch
    from fastssl.data.prepare import ensure_dataset

    from fastssl.engine import disk

    error = None
    if rank == 0:
        try:
            ensure_dataset(cfg.data)
            error = class_mismatch(Path(cfg.data.root))
        except (ValueError, FileNotFoundError, FileExistsError) as err:  # the data set is unusable as configured
            error = str(err)
        except OSError as err:
            if not disk.is_disk_full(err, Path(cfg.data.root)):
                raise
            error = (f"{_DISK_FULL}no space left on device while preparing the data set at {cfg.data.root}; the partial "
                     "copy was removed (free some space, then re-run the same command)")
    error = _broadcast_error(error)
    if error and error.startswith(_DISK_FULL):
        raise disk.DiskFull(Path(cfg.data.root), message=error.removeprefix(_DISK_FULL))
    if error:
        raise ConfigError(f"data.root: {error}")
    root = Path(cfg.data.root)
    try:  # from the manifests: rank 0's scan wrote them, or this is a cheap re-scan
        splits = {name: scan_image_folder(root / name, warn=False) for name in ("train", "test")}
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"data.root: {err}") from None
    if splits["train"].class_names != splits["test"].class_names:  # e.g. a class whose files were all rejected
        raise ConfigError(f"data.root: {class_mismatch(root) or 'train/ and test/ have different class folders'}")
    n_train = len(splits["train"])
    check_batches(cfg, n_train, world)
    if rank == 0:
        note_knn_bank(cfg, n_train)
    return n_train, data_fingerprint(splits)
