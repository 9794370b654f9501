"""Removing the GPS IFD from an EXIF TIFF structure in place, without moving anything else.

EXIF (in a JPEG APP1 segment after ``Exif\\0\\0``, or a PNG ``eXIf`` chunk) is a little TIFF:
a header naming the byte order and the offset of IFD0; each IFD is ``count (2) || entries
(12 each: tag, type, count, value-or-offset) || next IFD offset (4)``; values longer than 4
bytes live elsewhere in the structure, at an offset. IFD0's tag 0x8825 points at the GPS IFD.

The rewrite keeps every offset valid by changing no length: the 0x8825 entry is removed from
IFD0 (later entries move up by 12 bytes, the count drops by one, the next-IFD offset follows
them and the 12 bytes freed at the end are zeroed) and the GPS IFD with every value it points
at is overwritten with zeros, so the coordinates are not left behind as orphaned bytes.

It refuses (``UnsafeExif``) whenever it cannot be sure that the zeroed bytes belong to the GPS
IFD alone: a malformed structure, an unknown value type in the GPS IFD, a region that overlaps
any other IFD or value (IFD0, Exif, Interop, IFD1, the thumbnail), or a GPS pointer anywhere but
IFD0. The caller then drops the whole EXIF block instead (docs/format.md, "Metadata stripping").
"""

from __future__ import annotations

import struct

GPS_POINTER = 0x8825
EXIF_POINTER = 0x8769
INTEROP_POINTER = 0xA005
THUMBNAIL_OFFSET = 0x0201
THUMBNAIL_LENGTH = 0x0202
# TIFF 6.0 / EXIF value types → size in bytes of one value.
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_SUB_IFDS = (EXIF_POINTER, INTEROP_POINTER)


class UnsafeExif(ValueError):
    """The TIFF structure cannot be rewritten with certainty; drop the whole EXIF instead."""


class _Tiff:
    def __init__(self, data: bytes) -> None:
        if len(data) < 8:
            raise UnsafeExif("too short")
        order = data[:2]
        if order == b"II":
            self.e = "<"
        elif order == b"MM":
            self.e = ">"
        else:
            raise UnsafeExif("bad byte order")
        if self.u16(data, 2) != 42:
            raise UnsafeExif("bad magic")
        self.data = data

    def u16(self, data: bytes, pos: int) -> int:
        return int(struct.unpack_from(self.e + "H", data, pos)[0])

    def u32(self, data: bytes, pos: int) -> int:
        return int(struct.unpack_from(self.e + "I", data, pos)[0])

    def ifd(self, offset: int) -> tuple[int, list[tuple[int, int, int, int, int]]]:
        """(count, [(entry position, tag, type, count, value field)]) of the IFD at offset."""
        data = self.data
        if offset < 8 or offset + 2 > len(data):
            raise UnsafeExif("IFD offset out of range")
        count = self.u16(data, offset)
        if offset + 2 + 12 * count > len(data):
            raise UnsafeExif("IFD runs past the end")
        entries = []
        for i in range(count):
            pos = offset + 2 + 12 * i
            tag, kind, n = struct.unpack_from(self.e + "HHI", data, pos)
            entries.append((pos, tag, kind, n, self.u32(data, pos + 8)))
        return count, entries

    def next_ifd(self, offset: int, count: int) -> int:
        """The next-IFD offset of a main IFD (IFD0, IFD1). Sub-IFDs (Exif, GPS, Interop) have
        no successor, and writers (piexif among them) put values right after their entries
        instead of a next-IFD field, so it is never read for them."""
        pos = offset + 2 + 12 * count
        if pos + 4 > len(self.data):
            raise UnsafeExif("IFD runs past the end")
        return self.u32(self.data, pos)

    def regions(self, offset: int, *, strict: bool, chained: bool) -> list[tuple[int, int]]:
        """Byte ranges [a, b) used by the IFD at ``offset`` and its out-of-line values;
        ``chained``: a main IFD, whose 4-byte next-IFD field is part of it."""
        count, entries = self.ifd(offset)
        out = [(offset, offset + 2 + 12 * count + (4 if chained else 0))]
        for _, _, kind, n, value in entries:
            size = TYPE_SIZES.get(kind)
            if size is None:
                if strict:
                    raise UnsafeExif("unknown value type")
                continue  # another IFD's unknown type: its extent is unknown, but it is not ours to zero
            length = size * n
            if length > 4:
                if value + length > len(self.data):
                    raise UnsafeExif("value runs past the end")
                out.append((value, value + length))
        return out


def _overlaps(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> bool:
    return any(x0 < y1 and y0 < x1 for x0, x1 in a for y0, y1 in b)


def remove_gps(tiff: bytes) -> bytes:
    """The TIFF without its GPS IFD (same length), or ``tiff`` itself when it has none."""
    t = _Tiff(tiff)
    ifd0 = t.u32(tiff, 4)
    count0, entries0 = t.ifd(ifd0)
    gps_entries = [e for e in entries0 if e[1] == GPS_POINTER]
    # Every other IFD: their bytes must survive untouched, and none may carry a GPS pointer.
    keep = t.regions(ifd0, strict=False, chained=True)
    pending = [(e[4], False) for e in entries0 if e[1] in _SUB_IFDS]
    next_ifd = t.next_ifd(ifd0, count0)
    if next_ifd:
        pending.append((next_ifd, True))
    seen = {ifd0}
    while pending:
        offset, chained = pending.pop()
        if offset in seen or len(seen) > 16:
            raise UnsafeExif("IFD loop")
        seen.add(offset)
        count, entries = t.ifd(offset)
        keep += t.regions(offset, strict=False, chained=chained)
        for _, tag, _, _, value in entries:
            if tag == GPS_POINTER:
                raise UnsafeExif("GPS pointer outside IFD0")
            if tag in _SUB_IFDS:
                pending.append((value, False))
        thumb = {tag: value for _, tag, _, _, value in entries}
        if THUMBNAIL_OFFSET in thumb and THUMBNAIL_LENGTH in thumb:
            keep.append((thumb[THUMBNAIL_OFFSET], thumb[THUMBNAIL_OFFSET] + thumb[THUMBNAIL_LENGTH]))
        if chained:
            nxt = t.next_ifd(offset, count)
            if nxt:
                pending.append((nxt, True))
    if not gps_entries:
        return tiff
    if len(gps_entries) != 1:
        raise UnsafeExif("more than one GPS pointer")
    pointer_pos, _, kind, n, gps_offset = gps_entries[0]
    if kind not in (4, 13) or n != 1:
        raise UnsafeExif("GPS pointer is not one LONG/IFD")
    if gps_offset in seen:
        raise UnsafeExif("GPS IFD shared with another IFD")
    # Everything the GPS IFD covers must be disjoint from what the other IFDs (IFD0 included)
    # use, or zeroing it would damage them.
    zero = t.regions(gps_offset, strict=True, chained=False)
    if _overlaps(zero, keep):
        raise UnsafeExif("GPS data overlaps other EXIF data")
    out = bytearray(tiff)
    for a, b in zero:
        out[a:b] = bytes(b - a)
    # Remove the pointer entry from IFD0: shift later entries (and the next-IFD offset) up.
    ifd0_end = ifd0 + 2 + 12 * count0 + 4
    tail = bytes(out[pointer_pos + 12:ifd0_end])
    out[pointer_pos:pointer_pos + len(tail)] = tail
    out[ifd0_end - 12:ifd0_end] = bytes(12)
    struct.pack_into(t.e + "H", out, ifd0, count0 - 1)
    return bytes(out)
