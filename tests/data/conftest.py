"""Fixtures of the data-layer tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from _data_tiny import N_TEST, N_TRAIN, write_image_folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """40 train (+ 2 bad files) and 13 test 28×28 RGB PNGs in 3 classes; fresh random content each run."""
    return write_image_folder(tmp_path_factory.mktemp("tiny") / "ds", N_TRAIN, N_TEST)
