"""Cheap checks of a data folder's layout, run at config time so a wrong folder is one line, not a traceback.

Cheap means: stop at the first image found. The full scan (every file decoded, bad files skipped
and reported) still happens once in ``files.scan_image_folder``.
"""
from __future__ import annotations

import os
from pathlib import Path

from fastssl.data.files import IMAGE_SUFFIXES

#: The class folders ``prepare`` writes (``0_tshirt_top`` ... ``9_ankle_boot``), by their numeric prefix.
_FMNIST_PREFIXES = tuple(f"{k}_" for k in range(10))


def split_problem(split_dir: Path) -> str | None:
    """Why ``split_dir`` cannot be an image-folder split, or None: it needs class folders holding images."""
    classes = [e for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")]
    if not classes:
        return f"{split_dir} has no class sub-folders (expected {split_dir}/<class>/*.png|jpg)"
    for c in classes:
        with os.scandir(c.path) as it:
            if any(e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith(".") for e in it):
                return None
    return f"{split_dir} holds no .png/.jpg images in its class folders ({', '.join(sorted(c.name for c in classes)[:3])} ...)"


def _class_folders(split_dir: Path) -> dict[str, bool]:
    """Class folder name → whether it holds at least one image-suffixed file (hidden folders ignored,
    as ``files.scan_image_folder`` ignores them)."""
    found = {}
    for e in os.scandir(split_dir):
        if e.is_dir() and not e.name.startswith("."):
            with os.scandir(e.path) as it:
                found[e.name] = any(f.name.lower().endswith(IMAGE_SUFFIXES) and not f.name.startswith(".") for f in it)
    return found


def _names(names: set[str], holds: dict[str, bool], limit: int = 4) -> str:
    shown = [n + ("" if holds.get(n) else " (empty)") for n in sorted(names)[:limit]]
    return ", ".join(shown) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def class_mismatch(root: Path) -> str | None:
    """Why the class folders of ``root/train`` and ``root/test`` cannot share labels, or None.

    Labels are indices into each split's sorted class-folder names, so one folder that only one
    split has (an empty one included) shifts every label after it: the kNN then compares the wrong
    classes and reports near-zero accuracy as if the run had worked. Both splits must have the same
    class folders.
    """
    train, test = Path(root) / "train", Path(root) / "test"
    a, b = _class_folders(train), _class_folders(test)
    if set(a) == set(b):
        return None
    parts = []
    if set(a) - set(b):
        parts.append(f"only in {train}: {_names(set(a) - set(b), a)}")
    if set(b) - set(a):
        parts.append(f"only in {test}: {_names(set(b) - set(a), b)}")
    return (f"the class folders of {train} and {test} differ ({'; '.join(parts)}); labels come from the sorted "
            "class-folder names of each split, so both need the same class folders")


def foreign_entry(root: Path) -> Path | None:
    """Something in an unprepared Fashion-MNIST ``root`` that fastssl did not write (it must not be overwritten)."""
    if not root.exists():
        return None
    if not root.is_dir():
        return root
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.name not in ("train", "test") or not entry.is_dir():
            return entry
        for c in entry.iterdir():
            if not (c.is_dir() and c.name.startswith(_FMNIST_PREFIXES)):
                return c
    return None
