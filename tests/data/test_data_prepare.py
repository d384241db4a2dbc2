"""Fashion-MNIST preparation: IDX parsing, PNG writing, idempotence and crash recovery."""
from __future__ import annotations

import gzip
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastssl.data import prepare as prep
from fastssl.data.sources import DEBIAN_SOURCE, MARKER, SOURCE_FILES, missing_source_files


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """IDX writer written from the format description: 0, 0, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_source(folder: Path, n_train: int = 9, n_test: int = 5, rng=None) -> dict:
    rng = rng or np.random.default_rng()
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        img_name, lab_name = SOURCE_FILES[split]
        _write_idx(folder / img_name, images)
        _write_idx(folder / lab_name, labels)
        data[split] = (images, labels)
    return data


def _read_back(root: Path, split: str) -> dict[int, tuple[int, np.ndarray]]:
    """index -> (label from the folder name, pixels decoded by PIL)."""
    out = {}
    for cls in sorted((root / split).iterdir()):
        label = int(cls.name.split("_", 1)[0])
        for f in cls.iterdir():
            out[int(f.stem)] = (label, np.array(Image.open(f)))
    return out


@pytest.mark.parametrize("shape", [(1, 1), (28, 28), (7, 13), (32, 5)])
def test_png_encoder_roundtrip_through_pil(shape):
    img = np.random.default_rng().integers(0, 256, shape, dtype=np.uint8)
    decoded = Image.open(io.BytesIO(prep.encode_png_gray(img)))
    assert decoded.mode == "L" and decoded.size == (shape[1], shape[0])
    np.testing.assert_array_equal(np.array(decoded), img)


def test_read_idx_roundtrip_and_errors(tmp_path):
    arr = np.random.default_rng().integers(0, 256, (3, 4, 5), dtype=np.uint8)
    _write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(prep.read_idx(tmp_path / "a.gz"), arr)
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x01\x02")  # says 10 bytes, holds 2
    with pytest.raises(ValueError, match="header says"):
        prep.read_idx(tmp_path / "bad.gz")


def test_prepare_writes_every_image_with_its_label(tmp_path):
    data = _fake_source(tmp_path / "src")
    root = prep.prepare_fashion_mnist(tmp_path / "fm", tmp_path / "src", progress=False)
    assert (root / MARKER).is_file()
    for split, (images, labels) in data.items():
        assert sorted(p.name for p in (root / split).iterdir()) == list(prep.CLASS_FOLDERS)
        back = _read_back(root, split)
        assert sorted(back) == list(range(len(images)))
        for i, (label, pixels) in back.items():
            assert label == labels[i]
            np.testing.assert_array_equal(pixels, images[i])
    # nothing but the data set is left next to it
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fm")] == []


def test_prepare_is_idempotent(tmp_path, monkeypatch):
    _fake_source(tmp_path / "src")
    prep.prepare_fashion_mnist(tmp_path / "fm", tmp_path / "src", progress=False)
    monkeypatch.setattr(prep, "_write_split", lambda *a, **k: pytest.fail("prepared data set was rewritten"))
    assert prep.prepare_fashion_mnist(tmp_path / "fm", tmp_path / "src", progress=False) == tmp_path / "fm"


def test_crash_before_marker_is_redone(tmp_path, monkeypatch):
    data = _fake_source(tmp_path / "src")

    def crash(*_a, **_k):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(prep, "_write_marker", crash)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_fashion_mnist(tmp_path / "fm", tmp_path / "src", progress=False)
    assert not (tmp_path / "fm").exists()  # never a half-written root
    monkeypatch.undo()
    # a stale partial folder of a dead process on this host is cleaned up as well
    stale = tmp_path / prep._partial_name(tmp_path / "fm", 2**22 + 12345)
    stale.mkdir()
    root = prep.prepare_fashion_mnist(tmp_path / "fm", tmp_path / "src", progress=False)
    assert not stale.exists()
    assert len(_read_back(root, "train")) == len(data["train"][0])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fm")] == []


def test_unmarked_root_of_our_layout_is_redone_foreign_is_refused(tmp_path):
    _fake_source(tmp_path / "src")
    half = tmp_path / "fm" / "train" / prep.CLASS_FOLDERS[3]
    half.mkdir(parents=True)
    (half / "00000.png").write_bytes(b"half")
    root = prep.prepare_fashion_mnist(tmp_path / "fm", tmp_path / "src", progress=False)
    assert (root / MARKER).is_file()
    assert all(p.read_bytes() != b"half" for p in root.rglob("*.png"))  # the half-written file was redone

    (tmp_path / "mine" / "holiday").mkdir(parents=True)
    (tmp_path / "mine" / "holiday" / "x.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="did not write"):
        prep.prepare_fashion_mnist(tmp_path / "mine", tmp_path / "src", progress=False)
    assert (tmp_path / "mine" / "holiday" / "x.jpg").read_bytes() == b"precious"


def test_missing_source_names_the_apt_package(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        prep.prepare_fashion_mnist(tmp_path / "fm", tmp_path / "empty")
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert not (tmp_path / "fm").exists()


def test_cli(tmp_path, capsys):
    _fake_source(tmp_path / "src")
    prep.main(["--root", str(tmp_path / "out"), "--source", str(tmp_path / "src")])
    assert (tmp_path / "out" / MARKER).is_file()
    assert str(tmp_path / "out") in capsys.readouterr().out


@pytest.mark.skipif(bool(missing_source_files(DEBIAN_SOURCE)), reason="Debian package dataset-fashion-mnist not installed")
def test_real_debian_files_quick_check(tmp_path):
    """Counts and class balance of the real IDX files; a few real images written and read back."""
    src = DEBIAN_SOURCE
    sizes = {"train": 60000, "test": 10000}
    for split, (img_name, lab_name) in SOURCE_FILES.items():
        images, labels = prep.read_idx(src / img_name), prep.read_idx(src / lab_name)
        assert images.shape == (sizes[split], 28, 28) and labels.shape == (sizes[split],)
        assert np.bincount(labels, minlength=10).tolist() == [sizes[split] // 10] * 10
    images, labels = prep.read_idx(src / SOURCE_FILES["test"][0]), prep.read_idx(src / SOURCE_FILES["test"][1])
    pick = np.random.default_rng().choice(len(images), 20, replace=False)

    class _Bar:
        def update(self, _n):
            pass

    prep._write_split(images[pick], labels[pick], tmp_path / "test", _Bar())
    back = _read_back(tmp_path, "test")
    for j, i in enumerate(pick):
        label, pixels = back[j]
        assert label == labels[i]
        np.testing.assert_array_equal(pixels, images[i])
    assert os.path.isdir(tmp_path / "test" / "9_ankle_boot")


def test_ensure_dataset_prepares_and_validates_both_splits(tmp_path):
    from fastssl.data import DataConfig
    from fastssl.data.files import manifest_path

    data = _fake_source(tmp_path / "src")
    cfg = DataConfig(root=tmp_path / "fm", source=tmp_path / "src")
    assert prep.ensure_dataset(cfg, progress=False) == tmp_path / "fm"
    for split in ("train", "test"):
        assert manifest_path(tmp_path / "fm" / split).is_file()
        assert sum(1 for _ in (tmp_path / "fm" / split).rglob("*.png")) == len(data[split][0])
