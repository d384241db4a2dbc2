"""Corrupt images that pass every cheap check (a PNG / JPEG), for the data and the engine tests."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def corrupt_png(rng, side: int = 16) -> bytes:
    """Valid signature, header, chunk CRCs and IEND; garbage in the compressed IDAT data (DALI aborts on it)."""
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(buf, format="PNG")
    return corrupt_png_data(buf.getvalue(), rng)


def corrupt_png_data(png: bytes, rng) -> bytes:
    """Garble the IDAT payload of ``png`` but keep the chunk CRC, the header and IEND valid (passes the cheap checks)."""
    b = bytearray(png)
    i = 8
    while b[i + 4:i + 8] != b"IDAT":
        i += 12 + struct.unpack(">I", b[i:i + 4])[0]
    n = struct.unpack(">I", b[i:i + 4])[0]
    start, end = i + 8, i + 8 + n
    b[start + 4:end - 4] = rng.integers(0, 256, end - start - 8, dtype=np.uint8).tobytes()
    b[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(b[i + 4:end])) & 0xFFFFFFFF)
    return bytes(b)


def corrupt_jpeg(rng, side: int = 32) -> bytes:
    """Random bytes in the entropy-coded scan, SOI and EOI intact, such that a decoder fails on it.

    Random scan bytes sometimes still decode (libjpeg only warns about "extraneous bytes"); such a
    file is harmless to DALI too, so draws are repeated until PIL's decoder raises.
    """
    for _ in range(50):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="JPEG")
        b = bytearray(buf.getvalue())
        sos = b.index(b"\xff\xda")
        b[sos + 40:sos + 240] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        try:
            with Image.open(io.BytesIO(bytes(b))) as im:
                im.load()
        except OSError:
            return bytes(b)
    raise AssertionError("no undecodable JPEG in 50 draws")
