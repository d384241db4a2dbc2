"""Scan an image folder (``<split>/<class>/*.png|jpg``) into a validated file list.

DALI's decoders abort the whole pipeline on one undecodable file, so every file is checked before
the list reaches DALI. The checks are cheap (no pixel decode): non-empty, PNG / JPEG magic bytes,
the file's end marker present (catches truncated copies), and PIL parses the header. Rejected files
are skipped and reported in one logging warning with their count and a few examples.

The validated list is cached in a small JSON manifest next to the split folder
(``<root>/.<split>.fastssl-manifest.json``), keyed by the number of candidate files, their total
size, the newest mtime and a digest of their names, so a second scan of an unchanged folder only
lists and stats the files (70k files: well under a second) instead of opening each one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MANIFEST_VERSION = 1
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk of every complete PNG
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
# Some encoders append a few bytes after the JPEG end-of-image marker; accept it within this tail.
_JPEG_TAIL = 1024
_EXAMPLES = 5


@dataclass(frozen=True)
class ImageList:
    """A validated split: ``files[i]`` (absolute path) has class ``labels[i]`` (index into ``class_names``)."""

    files: list[str]
    labels: list[int]
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)  # rejected files, relative to the split folder

    def __len__(self) -> int:
        return len(self.files)


def check_image_file(path: Path | str, size: int | None = None) -> str | None:
    """Why ``path`` would crash an image decoder, or None when it looks decodable.

    Reads the first and last bytes and lets PIL parse the header (``Image.open`` is lazy: it does
    not decode pixels).
    """
    from PIL import Image

    try:
        if size is None:
            size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(16)
            if head.startswith(_PNG_MAGIC):
                f.seek(max(0, size - len(_PNG_IEND)))
                if f.read() != _PNG_IEND:
                    return "truncated PNG (no IEND chunk at the end)"
                expected = "PNG"
            elif head.startswith(_JPEG_MAGIC):
                f.seek(max(0, size - _JPEG_TAIL))
                if _JPEG_EOI not in f.read():
                    return "truncated JPEG (no end-of-image marker at the end)"
                expected = "JPEG"
            else:
                return "not a PNG or JPEG file (bad magic bytes)"
            f.seek(0)
            with Image.open(f) as im:
                if im.format != expected:
                    return f"PIL reads it as {im.format}, not {expected}"
                w, h = im.size
                if w <= 0 or h <= 0:
                    return f"bad image size {w}x{h}"
    except Exception as err:  # any parse failure means the file must not reach DALI
        return f"unreadable header ({type(err).__name__}: {err})"
    return None


def _list_candidates(split_dir: Path) -> tuple[list[str], list[tuple[str, int, int]]]:
    """Class folder names (sorted) and (relative path, size, mtime_ns) of every image-suffixed file."""
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    entries = []
    for name in classes:
        with os.scandir(split_dir / name) as it:
            found = []
            for e in it:
                if e.name.startswith(".") or not e.name.lower().endswith(IMAGE_SUFFIXES) or not e.is_file():
                    continue
                st = e.stat()
                found.append((f"{name}/{e.name}", st.st_size, st.st_mtime_ns))
        entries.extend(sorted(found))
    return classes, entries


def _cache_key(classes: list[str], entries: list[tuple[str, int, int]]) -> dict:
    digest = hashlib.sha1("\0".join(classes + ["//"] + [p for p, _, _ in entries]).encode()).hexdigest()
    return {
        "version": _MANIFEST_VERSION,
        "count": len(entries),
        "total_size": sum(s for _, s, _ in entries),
        "newest_mtime_ns": max((m for _, _, m in entries), default=0),
        "names_sha1": digest,
    }


def manifest_path(split_dir: Path) -> Path:
    split_dir = Path(split_dir)
    return split_dir.parent / f".{split_dir.name}.fastssl-manifest.json"


def _read_manifest(path: Path, key: dict) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("key") == key else None


def _write_manifest(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)  # atomic: a reader sees the old manifest or the new one
    except OSError as err:  # read-only data folder: validate again next time
        log.debug("could not write the manifest %s: %s", path, err)
        tmp.unlink(missing_ok=True)


def scan_image_folder(split_dir: Path | str, *, use_cache: bool = True, warn: bool = True) -> ImageList:
    """List ``split_dir/<class>/*.png|jpg|jpeg``, dropping (and reporting) files a decoder would reject.

    Classes are the sorted sub-folder names; files are sorted by class then name, so the order
    (and every index derived from it) is the same on every machine. ``warn=False`` logs the
    skipped-file report at debug level (ranks other than 0 repeat what rank 0 already said).
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"image folder {split_dir} does not exist")
    classes, entries = _list_candidates(split_dir)
    if not classes:
        raise ValueError(f"{split_dir} has no class sub-folders (expected {split_dir}/<class>/*.png|jpg)")
    key = _cache_key(classes, entries)
    mpath = manifest_path(split_dir)
    cached = _read_manifest(mpath, key) if use_cache else None
    if cached is not None:
        valid, skipped = cached["valid"], cached["skipped"]
    else:
        valid, skipped = [], []
        for rel, size, _ in entries:
            reason = check_image_file(split_dir / rel, size)
            if reason is None:
                valid.append(rel)
            else:
                skipped.append(rel)
                log.debug("skipping %s: %s", split_dir / rel, reason)
        if use_cache:
            _write_manifest(mpath, {"key": key, "valid": valid, "skipped": skipped})
    if skipped:
        log.log(
            logging.WARNING if warn else logging.DEBUG,
            "%s: skipped %d of %d image files that cannot be decoded (empty, truncated or corrupt), e.g. %s",
            split_dir, len(skipped), len(entries), ", ".join(skipped[:_EXAMPLES]),
        )
    if not valid:
        raise ValueError(f"{split_dir} holds no decodable .png/.jpg images ({len(skipped)} rejected)")
    label_of = {name: k for k, name in enumerate(classes)}
    base = str(split_dir.resolve())
    files = [os.path.join(base, rel) for rel in valid]
    labels = [label_of[rel.split("/", 1)[0]] for rel in valid]
    return ImageList(files=files, labels=labels, class_names=classes, skipped=list(skipped))
