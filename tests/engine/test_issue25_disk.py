"""Issue 25, class 5: a full disk for every file a run writes (not only checkpoints): one line, exit
4, no temp file left, the previous version of the file kept.

A real full file system where a tmpfs can be mounted (root), else the OS's own ENOSPC from
``/dev/full`` substituted into the writer.
"""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from _helpers import layout_only_folder, small_tmpfs

from fastssl.engine import disk
from fastssl.engine.metrics_log import MetricsLog


@pytest.fixture
def full_fs(tmp_path):
    """A 1 MiB tmpfs with a run folder in it, filled to the last byte (tests write into ``run/``)."""
    with small_tmpfs(tmp_path / "small", "1m", "") as mnt:
        run = mnt / "run"
        (run / "checkpoints" / "step4").mkdir(parents=True)
        (run / "encoder.pt").write_bytes(b"old encoder")
        (run / "curves.png").write_bytes(b"old curves")
        (run / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 1.0}\n')

        f = open(mnt / "filler", "ab", buffering=0)
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
        f.close()
        yield run


def _leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if ".tmp" in p.name)


def test_the_exported_encoder(full_fs):
    from fastssl.eval.export import save_encoder

    target = full_fs / "encoder.pt"
    big = {"w": torch.zeros(1 << 18)}  # 1 MiB: cannot fit
    with pytest.raises(disk.DiskFull) as err:
        with disk.written(target, target.with_name("encoder.pt.tmp"), target.with_name("encoder.json.tmp")):
            save_encoder(big, target, {"arch": "resnet18", "small_stem": True})
    assert str(err.value).startswith(f"no space left on device while writing {target}; the last complete checkpoint is "
                                     f"{full_fs / 'checkpoints' / 'step4'}")
    assert _leftovers(full_fs) == [] and target.read_bytes() == b"old encoder"


def test_the_curves(full_fs):
    from fastssl.report import plot_curves

    rows = [{"step": s, "kind": "train", "loss": 1.0 / s, "lr": 0.1} for s in range(1, 50)]
    metrics = full_fs.parent.parent / "metrics.jsonl"  # outside the full disk
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(disk.DiskFull, match="while writing .*curves.png"):
        disk.atomic_write(full_fs / "curves.png", lambda tmp: plot_curves(metrics, tmp), tmp=full_fs / ".curves.tmp.png")
    assert _leftovers(full_fs) == [] and (full_fs / "curves.png").read_bytes() == b"old curves"


def test_json_records(full_fs):
    from fastssl.engine.run_dir import mark_finished  # noqa: F401  (uses atomic_write_json)

    for name in ("summary.json", "knn_init.json", "finished.json", "config.yaml"):
        with pytest.raises(disk.DiskFull, match=f"while writing .*{name}; the last complete checkpoint is .*step4"):
            disk.atomic_write_json(full_fs / name, {"x": "y" * (1 << 20)})
        assert not (full_fs / name).exists()
    assert _leftovers(full_fs) == []


def test_the_metrics_log_keeps_whole_lines(full_fs, monkeypatch):
    log = MetricsLog.__new__(MetricsLog)  # the writer alone (TensorBoard is checked below)
    log.enabled, log.path, log._tb = True, full_fs / "metrics.jsonl", None
    before = log.path.read_text()
    with pytest.raises(disk.DiskFull, match="while writing .*metrics.jsonl"):
        log.write(2, {f"metric_{i}": float(i) for i in range(20000)})  # ~400 kB: more than is left
    assert log.path.read_text() == before  # no half line for the next reader


def test_the_metrics_log_on_resume(full_fs, monkeypatch):
    (full_fs / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "kind": "train"}) + "\n" for s in range(5)) + '{"step": 9, "ki')
    monkeypatch.setattr(disk, "atomic_write", _full_writer)
    with pytest.raises(disk.DiskFull):
        MetricsLog(full_fs, enabled=True, resume_step=3)
    assert _leftovers(full_fs) == []


def _full_writer(path, write, **kw):
    with disk.written(path, Path(str(path) + ".tmp")):
        with open(str(path) + ".tmp", "w") as f:
            f.write("x")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_cut_last_line_is_dropped_on_resume(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n{"step": 2, "kind": "train"}\n{"step": 3, "ki')
    log = MetricsLog(tmp_path, enabled=True, resume_step=2)
    log.close()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_preparing_fashion_mnist_on_a_full_disk_removes_its_partial_copy(tmp_path, monkeypatch):
    from fastssl.data import prepare

    monkeypatch.setattr(prepare, "missing_source_files", lambda source: [])
    monkeypatch.setattr(prepare, "read_idx", lambda path: torch.zeros((4, 28, 28), dtype=torch.uint8).numpy()
                        if "images" in path.name else torch.zeros(4, dtype=torch.uint8).numpy())
    monkeypatch.setattr(prepare, "SOURCE_FILES", {"train": ("train-images", "train-labels"), "test": ("t-images", "t-labels")})

    def full(images, labels, dest, bar):
        dest.mkdir(parents=True)
        (dest / "0.png").write_bytes(b"part")
        raise OSError(errno.ENOSPC, "No space left on device", str(dest / "1.png"))

    monkeypatch.setattr(prepare, "_write_split", full)
    with pytest.raises(OSError):
        prepare.prepare_fashion_mnist(tmp_path / "fm", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither root nor its partial copy


def test_the_cli_says_a_full_disk_in_one_line(tmp_path, capsys, monkeypatch):
    import fastssl.engine.loop as loop
    from fastssl import train

    data = layout_only_folder(tmp_path / "d")
    cfg = tmp_path / "c.yaml"
    out = tmp_path / "run"
    cfg.write_text(json.dumps({"run": {"output_dir": str(out)}, "data": {"dataset": "folder", "root": str(data)},
                               "model": {"arch": "test_vit", "patch_size": 4}}))
    (out / "checkpoints" / "step3").mkdir(parents=True)

    def tensorboard_fills_the_disk(c):
        (out / "events.tmp").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "tensorboard" / "events.out"))

    for failure, needle in ((tensorboard_fills_the_disk, "tensorboard/events.out"),
                            (lambda c: (_ for _ in ()).throw(disk.DiskFull(out / "encoder.pt")), "encoder.pt")):
        monkeypatch.setattr(loop, "run", failure)
        assert train.main(["--config", str(cfg)]) == 4
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and f"last complete checkpoint is {out / 'checkpoints' / 'step3'}" in err
        assert not list(out.glob("*.tmp"))
    monkeypatch.setattr(loop, "run", lambda c: (_ for _ in ()).throw(OSError(errno.EACCES, "Permission denied")))
    with pytest.raises(OSError):  # not a full disk: not said as one
        train.main(["--config", str(cfg)])


def test_a_full_disk_at_the_start_of_a_run(full_fs):
    """The output folder, its lock and the folder a fresh start moves the old run into need space too."""
    from fastssl.config import TrainConfig
    from fastssl.engine import run_dir

    data = layout_only_folder(full_fs.parent.parent / "d")

    def cfg(out, resume="auto"):
        return TrainConfig.model_validate({"run": {"output_dir": str(out), "resume": resume},
                                           "data": {"dataset": "folder", "root": str(data)},
                                           "model": {"arch": "test_vit", "patch_size": 4}})

    many = [full_fs / f"sub{i}" for i in range(200)]  # a tmpfs has inodes left: fill the directory blocks
    with pytest.raises(disk.DiskFull, match="no space left on device while writing"):
        for path in many:
            run_dir.prepare(cfg(path / "deeper" / "run"), rank=0)
            for f in list(run_dir._held):
                run_dir.release_lock(f)
    for f in list(run_dir._held):
        run_dir.release_lock(f)
