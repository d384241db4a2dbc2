"""Where the embedded Fashion-MNIST comes from, and how a prepared folder is recognised.

Kept apart from ``prepare`` so that the config can check these without importing the writer.
"""
from __future__ import annotations

from pathlib import Path

#: Where the Debian package ``dataset-fashion-mnist`` installs the four IDX files.
DEBIAN_SOURCE = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "install the Debian package with `apt-get install dataset-fashion-mnist`"

#: Written last into a prepared folder; its presence means the folder is complete.
MARKER = ".fastssl-prepared.json"

#: split -> (images file, labels file), the names used by the original distribution and Debian.
SOURCE_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def missing_source_files(source: Path) -> list[Path]:
    """The IDX files that are absent from ``source`` (empty list when all four are there)."""
    return [Path(source) / name for pair in SOURCE_FILES.values() for name in pair if not (Path(source) / name).is_file()]


def is_prepared(root: Path) -> bool:
    """True when ``root`` holds a complete data set written by ``fastssl.data.prepare``."""
    return (Path(root) / MARKER).is_file()
