"""Checking a PNG file the way a viewer would start to: signature, header, a sane size."""

from __future__ import annotations

import struct
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_dimensions(path: Path, min_bytes: int = 10_000) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the file is a PNG of sane size
    (a chart with data drawn is over 10 kB; an empty one less)."""
    data = path.read_bytes()
    assert data.startswith(SIGNATURE), f"{path} is not a PNG"
    assert min_bytes < len(data) < 10_000_000, f"{path}: {len(data)} bytes"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    assert data.endswith(b"IEND\xaeB`\x82"), f"{path} is cut short"
    return width, height
