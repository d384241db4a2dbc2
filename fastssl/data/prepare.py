"""Turn the Fashion-MNIST IDX files of the Debian package into an image folder, once.

Layout written: ``root/{train,test}/<k>_<class name>/<index:05d>.png`` (28×28 8-bit grey PNGs),
where ``<k>`` is the original Fashion-MNIST label, so the sorted folder names give labels 0..9 in the
original order and ``<index>`` is the image's position in its IDX file.

Crash safety: everything is written into a sibling ``.<root name>.partial-<host>-<pid>`` folder; the
marker file goes in last (atomically: temp file + rename) and then the whole folder is renamed onto
``root``. A crash therefore never leaves a ``root`` that looks complete; its partial folder is
removed by the next run, which starts over. Two processes preparing at once each build their own
partial folder; the second rename fails, finds the marker of the first and discards its copy.

CLI: ``python -m fastssl.data.prepare --root data/fashion-mnist``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import socket
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fastssl.data.sources import DEBIAN_SOURCE, INSTALL_HINT, MARKER, SOURCE_FILES, missing_source_files

if TYPE_CHECKING:
    from fastssl.data.config import DataConfig

log = logging.getLogger(__name__)

#: Class names of Zalando's Fashion-MNIST, indexed by label (folder-safe spelling).
CLASS_NAMES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
CLASS_FOLDERS = tuple(f"{k}_{name}" for k, name in enumerate(CLASS_NAMES))

_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes → uint8 array of the stored shape.

    IDX header: two zero bytes, a type byte (0x08 = ubyte), the number of dimensions, then one
    big-endian uint32 per dimension; the data follow in C order.
    """
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    if raw[2] != _IDX_UBYTE:
        raise ValueError(f"{path}: IDX type 0x{raw[2]:02x} is not unsigned byte")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    count = int(np.prod(shape)) if ndim else 1
    if len(raw) - offset != count:
        raise ValueError(f"{path}: header says {count} bytes of data, file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png_gray(img: np.ndarray) -> bytes:
    """Encode an [H, W] uint8 image as an 8-bit greyscale PNG (filter 0 on every row).

    Hand-rolled because PIL's encoder costs ~3x more per 28×28 image (encoder set-up dominates);
    the tests decode the result with PIL, an independent implementation.
    """
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"expected an [H, W] uint8 image, got {img.dtype} {img.shape}")
    h, w = img.shape
    rows = np.zeros((h, w + 1), dtype=np.uint8)  # leading 0 byte per row = filter type "None"
    rows[:, 1:] = img
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit depth, colour type 0 (grey), no interlace
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def _write_split(images: np.ndarray, labels: np.ndarray, dest: Path, bar) -> dict[str, int]:
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= len(CLASS_FOLDERS):
        raise ValueError(f"label {int(labels.max())} out of range for Fashion-MNIST's {len(CLASS_FOLDERS)} classes")
    for folder in CLASS_FOLDERS:
        (dest / folder).mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(CLASS_FOLDERS, 0)
    for idx in range(images.shape[0]):
        folder = CLASS_FOLDERS[int(labels[idx])]
        (dest / folder / f"{idx:05d}.png").write_bytes(encode_png_gray(images[idx]))
        counts[folder] += 1
        bar.update(1)
    return counts


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _partial_name(root: Path, pid: int) -> str:
    # The host name keeps machines that share a file system from judging each other's pids.
    return f".{root.name}.partial-{socket.gethostname()}-{pid}"


def _remove_stale_partials(root: Path) -> None:
    """Delete partial folders left by crashed runs on this host (their writer process is gone)."""
    prefix = _partial_name(root, 0)[:-1]
    for partial in root.parent.glob(f"{prefix}*"):
        try:
            pid = int(partial.name[len(prefix) :])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            log.info("removing %s left by a crashed preparation", partial)
            shutil.rmtree(partial, ignore_errors=True)


def _clear_unmarked_root(root: Path) -> None:
    """A ``root`` without marker: remove it if it only holds what we would write, else refuse."""
    if not root.exists() or (root / MARKER).is_file():  # absent, or finished meanwhile by another process
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder; move it away or set data.root elsewhere")
    ours = {"train", "test"}
    entries = list(root.iterdir())
    foreign = [p for p in entries if p.name not in ours and not p.name.startswith(".")]
    foreign += [c for p in entries if p.name in ours and p.is_dir() for c in p.iterdir() if c.name not in CLASS_FOLDERS]
    if foreign:
        raise FileExistsError(
            f"{root} exists without a {MARKER} marker and holds files fastssl did not write (e.g. {foreign[0]}); "
            "move it away, or use dataset: folder to train on it as it is"
        )
    log.warning("%s is an incomplete Fashion-MNIST folder (no marker): preparing it again", root)
    shutil.rmtree(root)


def _write_marker(folder: Path, info: dict) -> None:
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, folder / MARKER)


def prepare_fashion_mnist(root: Path, source: Path = DEBIAN_SOURCE, *, progress: bool = True) -> Path:
    """Write the Fashion-MNIST image folder at ``root`` unless it is already complete; returns ``root``.

    Raises FileNotFoundError (naming the apt package) when the IDX files are missing from ``source``.
    """
    root = Path(root)
    source = Path(source)
    if (root / MARKER).is_file():
        return root
    missing = missing_source_files(source)
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found ({', '.join(map(str, missing))}): {INSTALL_HINT}"
        )
    from tqdm.auto import tqdm

    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    _clear_unmarked_root(root)

    arrays = {}
    for split, (img_name, lab_name) in SOURCE_FILES.items():
        images, labels = read_idx(source / img_name), read_idx(source / lab_name)
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(f"{source}: unexpected IDX shapes {images.shape} / {labels.shape} for {split}")
        arrays[split] = (images, labels)

    partial = root.parent / _partial_name(root, os.getpid())
    shutil.rmtree(partial, ignore_errors=True)
    total = sum(images.shape[0] for images, _ in arrays.values())
    info: dict = {"source": str(source), "format": "png-gray", "splits": {}}
    try:
        with tqdm(total=total, desc=f"preparing {root}", unit="img", disable=not progress) as bar:
            for split, (images, labels) in arrays.items():
                info["splits"][split] = _write_split(images, labels, partial / split, bar)
        _write_marker(partial, info)
    except BaseException:  # e.g. a full disk or Ctrl-C: the partial copy goes now, not at the next run
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        os.rename(partial, root)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not (root / MARKER).is_file():  # not a concurrent preparer that won the race
            raise
    log.info("Fashion-MNIST written to %s (%d images)", root, total)
    return root


def ensure_dataset(cfg: DataConfig, *, progress: bool = True) -> Path:
    """Make ``cfg.root`` ready: write Fashion-MNIST if needed, then scan both splits once.

    The scan validates every image and caches the result in the folder's manifests, so loaders
    built afterwards (on any rank) start at once, and bad files are reported here, once. Call it on
    one process (rank 0) followed by a barrier; concurrent calls are safe but duplicate the work.
    """
    from fastssl.data.files import scan_image_folder

    if cfg.dataset == "fashion-mnist":
        prepare_fashion_mnist(cfg.root, cfg.source, progress=progress)
    for split in ("train", "test"):
        scan_image_folder(Path(cfg.root) / split)
    return Path(cfg.root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write Fashion-MNIST (Debian IDX files) as a PNG image folder.")
    parser.add_argument("--root", type=Path, default=Path("data/fashion-mnist"), help="output folder")
    parser.add_argument("--source", type=Path, default=DEBIAN_SOURCE, help="folder with the four IDX .gz files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = prepare_fashion_mnist(args.root, args.source)
    print(out)


if __name__ == "__main__":
    main()
