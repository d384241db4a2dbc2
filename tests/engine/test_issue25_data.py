"""Issue 25, classes 1 and 3: splits whose class folders disagree, and output inside the data.

Both are refused at config time (one line, exit 2, through ``fastssl.train.main`` in this process)
and again at set-up (``preflight`` / ``run_dir``), where a folder changed after the config was read
or a prepared Fashion-MNIST folder is checked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _config_cli import no_training, one_line_exit_2, write_tree  # noqa: F401 (autouse fixture)

from fastssl import train
from fastssl.config import ConfigError, load_config
from fastssl.data.folder_checks import class_mismatch
from fastssl.engine import preflight


def png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)).save(path)


def folder(root: Path, train=("a", "b", "c"), test=("a", "b", "c"), empty=()) -> Path:
    for split, classes in (("train", train), ("test", test)):
        for k, c in enumerate(classes):
            for i in range(4 if split == "train" else 2):
                png(root / split / c / f"{i}.png", seed=k * 10 + i)
    for rel in empty:
        (root / rel).mkdir(parents=True, exist_ok=True)
    return root


def write_cfg(tmp_path: Path, data: Path, out: Path | None = None, **sections) -> Path:
    tree = {"run": {"output_dir": str(out or tmp_path / "run")}, "data": {"dataset": "folder", "root": str(data), "image_size": 16},
            "model": {"arch": "test_vit", "patch_size": 4}, "optim": {"batch_size": 4, "warmup_epochs": 0},
            "eval": {"knn_k": 2, "knn_extra": []}}
    return write_tree(tmp_path, tree, sections)


# ---- class 1: splits that disagree ------------------------------------------------------------------

@pytest.mark.parametrize("train_classes, test_classes, empty, needles", [
    (("a", "b", "c", "d"), ("a", "b", "c"), (), ["only in", "train: d"]),                     # extra class in train
    (("a", "b", "c"), ("a", "b", "c"), ("train/aa",), ["train: aa (empty)"]),                 # extra empty folder in train
    (("a", "b", "c"), ("a", "b", "c", "z"), (), ["test: z"]),                                 # extra class in test
    (("a", "b", "c"), ("a", "B", "c"), (), ["train: b", "test: B"]),                           # renamed (case) class
    (("a", "b"), ("a", "b", "c"), ("test/.hidden",), ["test: c"]),                            # hidden folders do not count
])
def test_splits_with_other_class_folders_are_one_line(tmp_path, capsys, train_classes, test_classes, empty, needles):
    data = folder(tmp_path / "ds", train_classes, test_classes, empty)
    err = one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, data))])
    assert "class folders" in err and "differ" in err, err
    for needle in needles:
        assert needle in err, err


def test_same_class_folders_pass_even_with_an_empty_one_in_both(tmp_path):
    data = folder(tmp_path / "ds", empty=("train/zz", "test/zz", "train/.cache"))
    assert class_mismatch(data) is None
    load_config(write_cfg(tmp_path, data))


def test_a_folder_changed_after_the_config_is_refused_at_set_up(tmp_path):
    data = folder(tmp_path / "ds")
    cfg = load_config(write_cfg(tmp_path, data))
    (data / "test" / "b").rename(data / "test" / "b2")  # between reading the config and the set-up
    with pytest.raises(ConfigError, match=r"data.root: the class folders .* differ .*only in .*train: b"):
        preflight.prepare_data(cfg, 0, 1)


def test_set_up_returns_a_fingerprint_that_sees_a_changed_file(tmp_path):
    data = folder(tmp_path / "ds")
    cfg = load_config(write_cfg(tmp_path, data))
    n, before = preflight.prepare_data(cfg, 0, 1)
    assert n == 12 and before["train"]["images"] == 12 and before["test"]["classes"] == 3
    assert preflight.prepare_data(cfg, 0, 1)[1] == before  # same files: same fingerprint
    png(data / "train" / "a" / "new.png", seed=99)
    after = preflight.prepare_data(cfg, 0, 1)[1]
    assert after["train"] != before["train"] and after["test"] == before["test"]


# ---- class 3: output inside the data ------------------------------------------------------------------

def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("where, needle", [
    ("ds/train/run", "is inside data.root"),
    ("ds/run", "is inside data.root"),
    ("ds", "is the data folder"),
    ("ds/./train/..", "is the data folder"),
    (".", "is inside run.output_dir"),  # the data root inside the output directory
])
def test_output_dir_overlapping_the_data_is_refused_and_nothing_moves(tmp_path, capsys, where, needle):
    data = folder(tmp_path / "ds")
    before = _tree(data)
    out = tmp_path / where
    for resume in ("auto", "never"):
        err = one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, data, out)), f"run.resume={resume}"])
        assert needle in err, err
    assert _tree(data) == before


def test_symlinks_are_resolved_both_ways(tmp_path, capsys):
    data = folder(tmp_path / "ds")
    (tmp_path / "runs").symlink_to(data / "train")  # output through a link that points into the data
    assert "is inside data.root" in one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, data, tmp_path / "runs" / "r1"))])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "data").symlink_to(data)  # data.root given through a link inside the output directory
    err = one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, tmp_path / "out" / "data", tmp_path / "out"))])
    assert "is inside run.output_dir" in err


def test_relative_paths_and_siblings_with_a_common_prefix(tmp_path, capsys, monkeypatch):
    data = folder(tmp_path / "ds")
    monkeypatch.chdir(tmp_path)
    load_config(write_cfg(tmp_path, Path("ds"), Path("ds2/run")))  # ds2 is not inside ds
    assert "is inside data.root" in one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, Path("ds"), Path("ds/../ds/x")))])
    assert data.is_dir()


def test_a_link_changed_after_the_config_is_caught_before_anything_is_made(tmp_path):
    from fastssl.engine import run_dir

    data = folder(tmp_path / "ds")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    cfg = load_config(write_cfg(tmp_path, data, link / "run"))
    link.unlink()
    link.symlink_to(data)  # now the output directory would be ds/run
    with pytest.raises(ConfigError, match="is inside data.root"):
        run_dir.prepare(cfg, 0)
    assert not (data / "run").exists()


def test_a_link_inside_the_output_dir_pointing_at_the_data_is_refused_resolved(tmp_path, capsys):
    data = folder(tmp_path / "ds")
    (tmp_path / "out").mkdir()
    (tmp_path / "ds" / "link_to_out").symlink_to(tmp_path / "out")  # output_dir reached through the data
    err = one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, data, data / "link_to_out"))])
    assert "is inside data.root" in err
    (tmp_path / "ds" / "link_to_out").unlink()
    (tmp_path / "out" / "d").symlink_to(data, target_is_directory=True)
    err = one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, tmp_path / "out" / "d" / ".", tmp_path / "out" / "d" / "train" / ".."))])
    assert "data folder" in err


def test_a_fresh_start_moves_only_what_a_run_wrote(tmp_path, caplog):
    """run.output_dir pointed at a folder of the user's (a project, a home folder) with run.resume=never:
    the run's own outputs move aside, everything else stays where it is, untouched."""
    from fastssl.engine import run_dir

    data = folder(tmp_path / "ds")
    out = tmp_path / "project"
    (out / "src").mkdir(parents=True)
    (out / "src" / "main.py").write_text("print(1)\n")
    (out / "README.md").write_text("mine\n")
    (out / ".git").mkdir()
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "encoder.pt.tmp"):
        (out / name).write_text("run\n")
    (out / "checkpoints" / "step4").mkdir(parents=True)
    before = {p: p.read_bytes() for p in (out / "src" / "main.py", out / "README.md")}
    cfg = load_config(write_cfg(tmp_path, data, out), ["run.resume=never"])
    with caplog.at_level("WARNING", logger="fastssl"):
        moved = run_dir.prepare(cfg, 0)
    try:
        assert sorted(p.name for p in moved.iterdir()) == ["checkpoints", "config.yaml", "curves.png", "encoder.pt.tmp", "metrics.jsonl"]
        assert sorted(p.name for p in out.iterdir()) == sorted([".fastssl.lock", ".git", "README.md", "src", moved.name])
        assert {p: p.read_bytes() for p in before} == before
        assert "also holds 2 entries fastssl did not write (e.g. README.md, src): left where they are" in caplog.text
    finally:
        for f in list(run_dir._held):
            run_dir.release_lock(f)
