"""Image files for bad-input tests that PIL cannot or will not decode."""

from __future__ import annotations

import struct
import zlib


def decompression_bomb_png(side: int = 100_000) -> bytes:
    """A 57-byte PNG whose header claims ``side x side`` pixels (10 gigapixels by default) and holds no data:
    PIL refuses to open it (``DecompressionBombError``, not an ``OSError``)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
