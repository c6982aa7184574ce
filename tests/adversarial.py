"""Hostile and careless inputs, generated in the test that uses them: every case of part 3/7 in one place, so that
later stages can be checked against the same set."""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


class _RunsCommand:
    """Unpickling this runs a shell command (what a crafted CIFAR batch does to a trusting loader)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def hostile_cifar_root(root: Path, marker: Path) -> Path:
    """A CIFAR-10 root whose batch and meta files run `touch marker` when unpickled."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    payload = pickle.dumps({"data": _RunsCommand(f"touch {marker}"), "labels": [0]}, protocol=2)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (folder / name).write_bytes(payload)
    return root


def png_with_a_bad_chunk(path: Path) -> Path:
    """A PNG whose image data chunk claims half its length: Pillow opens it, then raises SyntaxError ("broken PNG
    file") while decoding, as it reads the rest of the data as the next chunk."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start:start + 4])
    data[start:start + 4] = struct.pack(">I", length // 2)
    path.write_bytes(bytes(data))
    return path


def needle_png(path: Path, width: int = 1, height: int = 1_000_000) -> Path:
    """A few KB of PNG that decodes to one pixel by a million: an absurd aspect ratio."""
    raw = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))
    return path


def float_tiff(path: Path, value: float = 0.5) -> Path:
    """A 32-bit float greyscale TIFF with values in 0..1 (mode F)."""
    Image.fromarray(np.full((16, 16), value, np.float32), mode="F").save(path)
    return path


def grey16_png(path: Path, value: int = 1000) -> Path:
    """A 16-bit greyscale PNG of one dark value (1000 of 65535)."""
    Image.fromarray(np.full((16, 16), value, np.uint16)).save(path)
    return path


def dds_of_an_unknown_pixel_format(path: Path) -> Path:
    """384 bytes that Pillow opens as DDS (whatever the file's name) and then fails on with NotImplementedError."""
    header = struct.pack("<4sIIIIIII44x", b"DDS ", 124, 0x1007, 8, 8, 0, 0, 0)
    pixel_format = struct.pack("<II4sIIIII", 32, 0x4, b"XYZW", 0, 0, 0, 0, 0)  # a FourCC no decoder knows
    path.write_bytes(header + pixel_format + struct.pack("<IIII4x", 0x1000, 0, 0, 0) + bytes(256))
    return path


def gif_html_polyglot(path: Path) -> Path:
    """A real GIF whose bytes also hold an HTML page with a script (in its comment block)."""
    Image.new("RGB", (32, 32), (200, 30, 30)).save(
        path, format="GIF", comment=b"<html><body><script>document.title='pwned'</script></body></html>")
    return path


def huge_png(path: Path, side: int = 13_000) -> Path:
    """A PNG of side x side RGBA zeros: 169 M pixels for 13,000 (under PIL's bomb limit) in about 0.7 MB."""
    packer = zlib.compressobj(9)
    row = bytes(1 + 4 * side)  # filter byte 0, then the row's pixels
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path
