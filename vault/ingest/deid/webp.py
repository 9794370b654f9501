"""WebP for researchers: the RIFF container rebuilt from the chunks that carry pixels and colour.

A WebP file is ``"RIFF" || size (4, little-endian: bytes after this field) || "WEBP"`` then
chunks ``FourCC (4) || size (4, LE) || data (size bytes, padded to even length)`` (Google,
"WebP Container Specification"). Kept: VP8X (with its EXIF and XMP flags cleared), ICCP, ANIM,
ALPH, ``VP8 ``, VP8L, and ANMF frames, each rebuilt from its 16-byte frame header and its ALPH,
``VP8 `` and VP8L sub-chunks. Dropped: EXIF, ``XMP ``, every other chunk (the container allows
unknown chunks, so they may hold anything) and whatever follows the RIFF size.

The chunk headers are walked first (``RangeSource`` reads), so the new RIFF size is known before
its first byte is sent and the image data is then copied range by range: memory holds headers
only. A chunk that runs past the RIFF size is ``Malformed``.
"""

from __future__ import annotations

import struct

from vault.ingest.deid.failures import Malformed
from vault.ingest.deid.source import Plan, RangeSource, Span

KEPT_CHUNKS = frozenset({b"ICCP", b"ANIM", b"ALPH", b"VP8 ", b"VP8L"})
FRAME_CHUNKS = frozenset({b"ALPH", b"VP8 ", b"VP8L"})
VP8X_EXIF, VP8X_XMP = 0x08, 0x04
ANMF_HEADER = 16


async def _chunks(source: RangeSource, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(FourCC, data start, data size) of each chunk in [start, end)."""
    found = []
    pos = start
    while pos < end:
        if pos + 8 > end:
            raise Malformed()
        header = await source.read(pos, pos + 8)
        size = struct.unpack("<I", header[4:])[0]
        following = pos + 8 + size + (size & 1)
        if following > end:
            raise Malformed()
        found.append((header[:4], pos + 8, size))
        pos = following
    return found


def _padded(size: int) -> int:
    return size + (size & 1)


async def webp_plan(source: RangeSource) -> Plan:
    """The de-identified file."""
    head = await source.read(0, 12) if source.size >= 12 else b""
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        raise Malformed()
    riff_end = 8 + struct.unpack("<I", head[4:8])[0]
    if not 12 <= riff_end <= source.size:
        raise Malformed()
    body = Plan()
    for fourcc, start, size in await _chunks(source, 12, riff_end):
        whole = Span(start - 8, start + _padded(size))
        if fourcc == b"VP8X":
            if size < 10:
                raise Malformed()
            data = await source.read(start, start + _padded(size))
            flags = data[0] & ~(VP8X_EXIF | VP8X_XMP)
            body.add(b"VP8X" + struct.pack("<I", size) + bytes([flags]) + data[1:])
        elif fourcc == b"ANMF":
            if size < ANMF_HEADER:
                raise Malformed()
            frame_header = await source.read(start, start + ANMF_HEADER)
            subchunks = await _chunks(source, start + ANMF_HEADER, start + size)
            kept = [(s - 8, s + _padded(n)) for kind, s, n in subchunks if kind in FRAME_CHUNKS]
            new_size = ANMF_HEADER + sum(b - a for a, b in kept)
            body.add(b"ANMF" + struct.pack("<I", new_size) + frame_header)
            for a, b in kept:  # padded sub-chunks: the new frame's size is even, no padding
                body.add(Span(a, b))
        elif fourcc in KEPT_CHUNKS:
            body.add(whole)
    plan = Plan()
    plan.add(b"RIFF" + struct.pack("<I", 4 + body.size) + b"WEBP")
    for piece in body.pieces:
        plan.add(piece)
    return plan
