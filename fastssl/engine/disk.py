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
import shutil
from pathlib import Path

EXIT_DISK_FULL = 4
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_WRITER_FAILURE = ("inline_container", "PytorchStreamWriter", "iostream error", "file write failed")
#: Below this many free bytes a failed torch write is taken to be a full disk.
LOW_SPACE = 64 << 20


class DiskFull(Exception):
    """The disk filled up while writing ``path``; partial files were removed."""

    exit_code = EXIT_DISK_FULL

    def __init__(self, path: Path, last_complete: Path | str | None):
        self.path = path
        super().__init__(f"no space left on device while writing {path}; the last complete checkpoint is "
                         f"{last_complete or 'none'} (free some space, then re-run the same command to resume)")


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


def atomic_write_text(path: Path, text: str, *, last_complete: Path | str | None = None) -> None:
    """Write via ``<name>.tmp`` + rename; on a full disk remove the temp file and raise ``DiskFull``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the write error of a full disk shows here, not at a later close
        tmp.replace(path)
    except BaseException as err:
        remove_quietly(tmp)
        if isinstance(err, Exception) and is_disk_full(err, path):
            raise DiskFull(path, last_complete) from None
        raise


def atomic_write_json(path: Path, obj, *, last_complete: Path | str | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str), last_complete=last_complete)
