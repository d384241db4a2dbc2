"""A full disk while checkpointing or writing run files (issue 13, case 9).

The checkpoint code runs with a stand-in engine (``save_checkpoint`` writes a tensor file like
DeepSpeed's), so the test needs no training. The disk is filled for real where a tmpfs can be
mounted (root), and by substituting torch's own full-disk error elsewhere.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import small_tmpfs

from fastssl.engine import checkpoint as ckpt
from fastssl.engine import disk


class FakeEngine:
    """Writes ``mp_rank_00_model_states.pt`` of ``nbytes`` into the tag folder, as DeepSpeed's save does."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes

    def save_checkpoint(self, root, tag, client_state, save_latest):
        (Path(root) / tag).mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.zeros(self.nbytes // 4), **client_state}, Path(root) / tag / "mp_rank_00_model_states.pt")

    def train_batch_size(self):
        return 16

    def zero_optimization_stage(self):
        return 0


def _save(root: Path, step: int, nbytes: int) -> Path:
    return ckpt.save(FakeEngine(nbytes), root, ckpt.TrainState(global_step=step), {"loader": {}}, keep=2, rank=0)


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs (root only); skipped where mounting is not permitted."""
    with small_tmpfs(tmp_path / "small", "2m", "; test_disk_full_error_of_torch covers the logic") as mnt:
        yield mnt


def test_checkpoint_on_a_really_full_disk(small_fs):
    root = small_fs / "checkpoints"
    first = _save(root, 4, 256 << 10)  # fits
    with pytest.raises(disk.DiskFull) as err:
        _save(root, 8, 4 << 20)  # does not
    msg = str(err.value)
    assert msg.startswith(f"no space left on device while writing {root / 'step8'}; the last complete checkpoint is {first}")
    assert "\n" not in msg
    assert sorted(p.name for p in root.iterdir()) == ["step4"]  # no partial .tmp-step8, the good one kept
    # A run file written next (e.g. deepspeed.json on a re-run) leaves no 0-byte .tmp either.
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    with pytest.raises(disk.DiskFull, match="while writing .*deepspeed.json"):
        disk.atomic_write_json(small_fs / "deepspeed.json", {"k": "v" * 100000}, last_complete=first)
    assert not list(small_fs.glob("*.tmp"))


def test_disk_full_error_of_torch(tmp_path, monkeypatch):
    """torch reports a full disk as '[enforce fail at inline_container.cc] unexpected pos'; with no free space that is DiskFull."""
    root = tmp_path / "checkpoints"
    first = _save(root, 4, 1024)
    real_save = torch.save

    def save_to_full_disk(obj, path, *a, **k):
        Path(path).write_bytes(b"partial")  # what a failing writer leaves behind
        real_save(obj, "/dev/full")  # raises torch's own error for ENOSPC

    monkeypatch.setattr(torch, "save", save_to_full_disk)
    monkeypatch.setattr(disk, "free_bytes", lambda path: 0)
    with pytest.raises(disk.DiskFull, match=f"the last complete checkpoint is {first}"):
        _save(root, 8, 1024)
    assert sorted(p.name for p in root.iterdir()) == ["step4"]


def test_other_write_errors_are_not_called_disk_full(tmp_path, monkeypatch):
    def broken(obj, path, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", broken)  # plenty of free space: not a full disk, the error stays
    with pytest.raises(RuntimeError, match="unexpected pos"):
        _save(tmp_path / "checkpoints", 4, 1024)
    assert not list((tmp_path / "checkpoints").iterdir())
    assert disk.is_disk_full(OSError(28, "No space left on device"), tmp_path)
