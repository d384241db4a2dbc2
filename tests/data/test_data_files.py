"""Image-folder scan: order, labels, rejection (and counting) of files a decoder would crash on, cache."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastssl.data import files as fs


def _png_bytes(rng, size=(9, 11)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(rng, size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path) -> tuple[Path, dict[str, str]]:
    """A split with good PNG/JPEG files in 2 classes plus every kind of bad file; returns (dir, bad→reason)."""
    rng = np.random.default_rng()
    split = tmp_path / "train"
    (split / "b_dog").mkdir(parents=True)
    (split / "a_cat").mkdir()
    (split / ".hidden").mkdir()  # not a class
    for i in range(4):
        (split / "a_cat" / f"{i}.png").write_bytes(_png_bytes(rng))
    for i in range(3):
        (split / "b_dog" / f"{i}.JPG").write_bytes(_jpeg_bytes(rng))
    (split / "b_dog" / "trailer.jpeg").write_bytes(_jpeg_bytes(rng) + b"\0" * 40)  # bytes after EOI: fine
    (split / "b_dog" / "png_named.jpg").write_bytes(_png_bytes(rng))  # decoders sniff content: fine
    (split / "a_cat" / "notes.txt").write_text("not an image, not counted")
    bad = {
        "a_cat/empty.png": b"",
        "a_cat/garbage.png": rng.integers(0, 256, 200, dtype=np.uint8).tobytes(),
        "a_cat/truncated.png": _png_bytes(rng)[:-30],
        "b_dog/truncated.jpg": _jpeg_bytes(rng)[:-200],
        "b_dog/bad_header.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 20 + b"\x00\x00\x00\x00IEND\xaeB`\x82",
    }
    for rel, data in bad.items():
        (split / rel).write_bytes(data)
    return split, bad


def test_scan_orders_labels_and_skips_bad_files(folder, caplog):
    split, bad = folder
    with caplog.at_level(logging.WARNING, logger="fastssl.data.files"):
        scan = fs.scan_image_folder(split)
    assert scan.class_names == ["a_cat", "b_dog"]
    rel = [str(Path(f).relative_to(split.resolve())) for f in scan.files]
    assert rel == ["a_cat/0.png", "a_cat/1.png", "a_cat/2.png", "a_cat/3.png",
                   "b_dog/0.JPG", "b_dog/1.JPG", "b_dog/2.JPG", "b_dog/png_named.jpg", "b_dog/trailer.jpeg"]
    assert scan.labels == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert sorted(scan.skipped) == sorted(bad)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"skipped {len(bad)} of {len(bad) + 9}" in warnings[0]
    assert any(name in warnings[0] for name in bad)


def test_each_bad_file_has_a_reason(folder):
    split, bad = folder
    for rel in bad:
        assert fs.check_image_file(split / rel) is not None, rel
    assert fs.check_image_file(split / "a_cat" / "0.png") is None


def test_manifest_makes_the_second_scan_skip_validation(folder, monkeypatch, caplog):
    split, bad = folder
    first = fs.scan_image_folder(split)
    assert fs.manifest_path(split).is_file()
    monkeypatch.setattr(fs, "check_image_file", lambda *a, **k: pytest.fail("validated again despite the cache"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastssl.data.files"):
        second = fs.scan_image_folder(split)
    assert second == first
    # Reported once per process: the second scan of the same split stays quiet at WARNING level.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and f"skipped {len(bad)}" in r.getMessage()]


def test_manifest_invalidated_by_a_change(folder):
    split, _ = folder
    fs.scan_image_folder(split)
    (split / "a_cat" / "9.png").write_bytes(_png_bytes(np.random.default_rng()))
    (split / "b_dog" / "0.JPG").write_bytes(b"")  # same name, now empty
    scan = fs.scan_image_folder(split)
    names = {Path(f).name for f in scan.files}
    assert "9.png" in names and "0.JPG" not in names and "b_dog/0.JPG" in scan.skipped


def test_empty_or_missing_split(tmp_path):
    with pytest.raises(FileNotFoundError):
        fs.scan_image_folder(tmp_path / "nope")
    (tmp_path / "s").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        fs.scan_image_folder(tmp_path / "s")
    (tmp_path / "s" / "k").mkdir()
    (tmp_path / "s" / "k" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no decodable"):
        fs.scan_image_folder(tmp_path / "s")
