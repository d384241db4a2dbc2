"""Tiny synthetic image folders for the data-layer tests (a few dozen PNGs).

A uniquely named module (not conftest) so that test files can import its constants."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

N_TRAIN, N_TEST, N_CLASSES, SIDE = 40, 13, 3, 28


def write_image_folder(root: Path, n_train: int, n_test: int, *, n_classes: int = N_CLASSES, side: int = SIDE,
                       seed: int | None = None, bad_files: bool = True) -> Path:
    """root/{train,test}/c<k>/<i>.png, random RGB content; image i has class i % n_classes.

    With ``bad_files`` the train split also gets an empty and a corrupt .png that the scan must skip.
    """
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for k in range(n_classes):
            (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            # smooth-ish random images: a coarse random grid upsampled, plus noise, so crops differ
            coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.float64)
            img = np.kron(coarse, np.ones((side // 4 + 1, side // 4 + 1, 1)))[:side, :side]
            img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / split / f"c{i % n_classes}" / f"{i:03d}.png")
    if bad_files:
        (root / "train" / "c0" / "empty.png").write_bytes(b"")
        (root / "train" / "c1" / "corrupt.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    return root
