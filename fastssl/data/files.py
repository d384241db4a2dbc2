"""Scan an image folder (``<split>/<class>/*.png|jpg``) into a validated file list.

DALI's decoders abort the whole pipeline on one undecodable file, so every file is checked before
the list reaches DALI: non-empty, PNG / JPEG magic bytes, the end marker present (catches truncated
copies), PIL parses the header, and then PIL decodes the pixels. The full decode is what catches a
PNG with a valid header and ``IEND`` but corrupt compressed data, or a JPEG with corrupt scan data
(checked: DALI aborts on the former; PIL rejects both). JPEGs are decoded at 1/8 scale
(``Image.draft``), which still reads every entropy-coded byte. Files are checked in a thread pool
(PIL releases the GIL while decoding). Rejected files are skipped and reported in one warning per
process and split with their count and a few examples; the full list is in the manifest.

The validated list is cached in a small JSON manifest next to the split folder
(``<root>/.<split>.fastssl-manifest.json``), keyed by the number of candidate files, their total
size, the newest mtime and a digest of their names, so a second scan of an unchanged folder only
lists and stats the files (70k files: well under a second) instead of decoding each one. A
read-only data folder gets its manifest in the user cache instead
(``$XDG_CACHE_HOME/fastssl/manifests/``, default ``~/.cache``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MANIFEST_VERSION = 2  # 2: full decode (a version-1 manifest may list files with corrupt pixel data)
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

    Reads the first and last bytes, lets PIL parse the header, then decodes the pixels.
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
    try:
        with Image.open(path) as im:
            if expected == "JPEG":
                im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
            im.load()
    except Exception as err:  # the compressed pixel data is corrupt
        return f"corrupt image data ({type(err).__name__}: {err})"
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


def fallback_manifest_path(split_dir: Path) -> Path:
    """Where the manifest of a read-only data folder is cached: the user cache, keyed by the split's path."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastssl" / "manifests"
    digest = hashlib.sha1(str(Path(split_dir).resolve()).encode()).hexdigest()[:16]
    return base / f"{Path(split_dir).name}-{digest}.json"


def _read_manifest(path: Path, key: dict) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key else None


def _try_write(path: Path, text: str) -> bool:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic: a reader sees the old manifest or the new one
        return True
    except OSError as err:
        log.debug("could not write the manifest %s: %s", path, err)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only folder refuses the unlink too; there is nothing to remove then
            pass
        return False


def _write_manifest(split_dir: Path, data: dict) -> Path | None:
    """Next to the split if the folder is writable, else in the user cache; None if neither is."""
    text = json.dumps(data)
    for path in (manifest_path(split_dir), fallback_manifest_path(split_dir)):
        if _try_write(path, text):
            return path
    return None


def _validate(split_dir: Path, entries: list[tuple[str, int, int]]) -> tuple[list[str], list[str]]:
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(lambda e: check_image_file(split_dir / e[0], e[1]), entries, chunksize=64))
    valid, skipped = [], []
    for (rel, _, _), reason in zip(entries, reasons):
        if reason is None:
            valid.append(rel)
        else:
            skipped.append(rel)
            log.debug("skipping %s: %s", split_dir / rel, reason)
    return valid, skipped


#: (split folder, cache key) already reported by this process: the train split is scanned by the
#: train loader and again by the kNN bank loader, and the report must appear once.
_reported: set[tuple[str, str]] = set()


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
    cached = None
    where = None
    if use_cache:
        for candidate in (manifest_path(split_dir), fallback_manifest_path(split_dir)):
            cached = _read_manifest(candidate, key)
            if cached is not None:
                where = candidate
                break
    if cached is not None:
        valid, skipped = cached["valid"], cached["skipped"]
    else:
        valid, skipped = _validate(split_dir, entries)
        if use_cache:
            where = _write_manifest(split_dir, {"key": key, "valid": valid, "skipped": skipped})
    report = (str(split_dir.resolve()), key["names_sha1"] + str(key["newest_mtime_ns"]))
    if skipped:
        level = logging.WARNING if warn and report not in _reported else logging.DEBUG
        log.log(
            level,
            "%s: skipped %d of %d image files that cannot be decoded (empty, truncated or corrupt), e.g. %s%s",
            split_dir, len(skipped), len(entries), ", ".join(skipped[:_EXAMPLES]),
            f" (all listed in {where})" if where is not None and len(skipped) > _EXAMPLES else "",
        )
        if level == logging.WARNING:
            _reported.add(report)
    if not valid:
        raise ValueError(f"{split_dir} holds no decodable .png/.jpg images ({len(skipped)} rejected)")
    label_of = {name: k for k, name in enumerate(classes)}
    base = str(split_dir.resolve())
    files = [os.path.join(base, rel) for rel in valid]
    labels = [label_of[rel.split("/", 1)[0]] for rel in valid]
    return ImageList(files=files, labels=labels, class_names=classes, skipped=list(skipped))
