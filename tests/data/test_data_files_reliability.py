"""Bad images that pass the cheap checks, a read-only data folder, and a skipped-files report given once.

Cases 5 and 6 of issue 13: a PNG whose header and IEND are fine but whose compressed data is corrupt
(DALI aborts on it: checked by hand, "Critical error in pipeline"), a JPEG with corrupt scan data,
and a data folder the run cannot write its manifest into.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from _corrupt_images import corrupt_jpeg, corrupt_png_data
from PIL import Image

from fastssl.data import files as fs


def _png(rng, side=12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def split(tmp_path) -> Path:
    rng = np.random.default_rng()
    root = tmp_path / "train"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"{i}.png").write_bytes(_png(rng))
    (root / "a" / "bad_data.png").write_bytes(corrupt_png_data(_png(rng), rng))
    (root / "b" / "bad_scan.jpg").write_bytes(corrupt_jpeg(rng))
    return root


def test_corrupt_compressed_data_passes_the_cheap_checks_but_is_skipped(split, caplog):
    bad_png, bad_jpg = split / "a" / "bad_data.png", split / "b" / "bad_scan.jpg"
    assert bad_png.read_bytes().endswith(b"IEND\xaeB`\x82")  # the case: header and IEND intact
    assert "corrupt image data" in fs.check_image_file(bad_png)
    assert "corrupt image data" in fs.check_image_file(bad_jpg)
    with caplog.at_level(logging.WARNING, logger="fastssl.data.files"):
        scan = fs.scan_image_folder(split)
    assert sorted(scan.skipped) == ["a/bad_data.png", "b/bad_scan.jpg"] and len(scan) == 6
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "skipped 2 of 8" in warned[0] and "a/bad_data.png" in warned[0]


def test_skipped_files_are_reported_once_per_process(split, caplog):
    """The train split is scanned by the train loader and by the kNN bank loader: one warning, not one each."""
    with caplog.at_level(logging.WARNING, logger="fastssl.data.files"):
        for _ in range(4):
            fs.scan_image_folder(split)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_read_only_data_folder_caches_the_manifest_in_the_user_cache(split, tmp_path, monkeypatch):
    """Root ignores file modes, so the read-only folder is simulated: writes under it fail with EROFS."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_write_text = Path.write_text

    def refuse_under_data(self, *args, **kwargs):
        if str(self).startswith(str(split.parent)) and "cache" not in str(self):
            raise OSError(30, "Read-only file system", str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", refuse_under_data)
    first = fs.scan_image_folder(split)
    assert not fs.manifest_path(split).exists()
    assert fs.fallback_manifest_path(split).is_file()
    assert not list(split.parent.glob("*.tmp"))
    monkeypatch.setattr(fs, "check_image_file", lambda *a, **k: pytest.fail("validated again despite the cache"))
    assert fs.scan_image_folder(split) == first


def test_no_writable_place_at_all_still_scans(split, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)
    monkeypatch.setattr(Path, "unlink", refuse)  # the old code's clean-up raised again here
    assert len(fs.scan_image_folder(split)) == 6


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a read-only bind")
def test_real_read_only_mount(split, tmp_path, monkeypatch):
    """The same with a real read-only bind mount (only where the tests run as root)."""
    import subprocess

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(split.parent), str(ro)], capture_output=True).returncode:
        pytest.skip("mount --bind is not permitted here")
    try:
        scan = fs.scan_image_folder(ro / "train")
        assert len(scan) == 6 and fs.fallback_manifest_path(ro / "train").is_file()
    finally:
        subprocess.run(["umount", str(ro)], check=True)
