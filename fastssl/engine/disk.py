"""A full disk while writing run outputs: one line naming the file and the last complete checkpoint.

torch's zip writer does not report ENOSPC as such: a full disk surfaces as ``RuntimeError: [enforce
fail at inline_container.cc:…] . unexpected pos …`` (or "PytorchStreamWriter failed writing file").
``is_disk_full`` therefore accepts ENOSPC / EDQUOT anywhere in the exception chain, the OS message,
or such a writer failure on a file system that has (almost) no free space left.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

EXIT_DISK_FULL = 4
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_WRITER_FAILURE = ("inline_container", "PytorchStreamWriter", "iostream error", "file write failed")
#: Below this many free bytes a failed torch write is taken to be a full disk.
LOW_SPACE = 64 << 20
#: A complete checkpoint folder (``engine/checkpoint.py`` writes ``.tmp-step<N>`` and renames it to this).
STEP_DIR = re.compile(r"^step(\d+)$")


class DiskFull(Exception):
    """The disk filled up while writing ``path``; partial files were removed."""

    exit_code = EXIT_DISK_FULL

    def __init__(self, path: Path, last_complete: Path | str | None = "auto", *, message: str | None = None):
        self.path = path
        if last_complete == "auto":
            last_complete = last_checkpoint(Path(path).parent)
        super().__init__(message or (f"no space left on device while writing {path}; the last complete checkpoint is "
                                     f"{last_complete or 'none'} (free some space, then re-run the same command to resume)"))


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint of the run whose output directory is ``out`` (or holds ``out``)."""
    for folder in (Path(out), *Path(out).parents[:2]):
        found = checkpoints(folder / "checkpoints")
        if found:
            return found[-1][1]
    return None


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return LOW_SPACE + 1  # cannot tell: do not claim the disk is full


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_disk_full(err: BaseException, path: Path) -> bool:
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
    text = " ".join(str(e) for e in _chain(err))
    return any(s in text for s in _WRITER_FAILURE) and free_bytes(path) < LOW_SPACE


def remove_quietly(path: Path) -> None:
    """Remove a partial file or folder; never raises (it runs while handling another error)."""
    try:
        if Path(path).is_dir() and not Path(path).is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


@contextmanager
def written(path: Path, *temps: Path, last_complete: Path | str | None = "auto"):
    """Around code that writes ``path`` through ``temps``: on any error the temps go; a full disk
    becomes ``DiskFull`` (one line naming ``path`` and the last complete checkpoint, exit 4)."""
    try:
        yield
    except BaseException as err:
        for t in temps:
            remove_quietly(t)
        if isinstance(err, Exception) and not isinstance(err, DiskFull) and is_disk_full(err, path):
            raise DiskFull(path, last_complete) from None
        raise


def atomic_write(path: Path, write, *, tmp: Path | None = None, last_complete: Path | str | None = "auto") -> Path:
    """``write(tmp)`` then fsync and rename onto ``path`` (the checkpoint rule, for any file a run
    writes): a reader sees the old file or the new one, never a part, and no temp file is left.
    ``tmp`` defaults to ``<name>.tmp``; give one with the right suffix where the writer infers the
    format from it (matplotlib)."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(path.name + ".tmp")
    with written(path, tmp, last_complete=last_complete):
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the write error of a full disk may show only here
        finally:
            os.close(fd)
        tmp.replace(path)
    return path


def atomic_write_text(path: Path, text: str, *, last_complete: Path | str | None = "auto") -> None:
    """Write via ``<name>.tmp`` + rename; on a full disk remove the temp file and raise ``DiskFull``."""
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the write error of a full disk shows here, not at a later close

    atomic_write(path, write, last_complete=last_complete)


def sweep_temps(out: Path) -> None:
    """Remove the temp files of interrupted writes in ``out`` (never a checkpoint folder: ``save`` owns those)."""
    try:
        entries = list(Path(out).iterdir())
    except OSError:
        return
    for p in entries:
        if p.is_file() and (p.name.endswith(".tmp") or ".tmp." in p.name):
            remove_quietly(p)


def atomic_write_json(path: Path, obj, *, last_complete: Path | str | None = "auto") -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str), last_complete=last_complete)
