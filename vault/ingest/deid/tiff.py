"""TIFF for researchers: the file rebuilt from image-structure tags and its strips or tiles.

TIFF 6.0 (and BigTIFF: magic 43, 8-byte offsets and counts): a header naming the byte order and
the first IFD; each IFD is ``count || entries (tag, type, count, value or offset) || next IFD``.
Every IFD of the main chain (every page) is rebuilt with only the tags in ``KEPT_TAGS``, the
ones a decoder needs to lay out, decompress and colour the pixels. Everything else goes:
ImageDescription, Make, Model, Software, DateTime, Artist, HostComputer, Copyright,
DocumentName, PageName, XMP (700), IPTC (33723), Photoshop (34377), the EXIF and GPS IFDs (and
the MakerNote inside EXIF), SubIFDs (thumbnails, previews, other resolutions), GeoTIFF, DNG and
private tags. Strip and tile data are copied byte for byte; only their offsets change.

Output layout: header, then each IFD followed by its out-of-line values (on even offsets), then
the image data of every IFD in order. Sizes are known before the first byte is sent. The byte
order and the flavour (classic or BigTIFF) stay those of the input, so values are copied as
stored; strip and tile offsets are written as LONG (LONG8 in BigTIFF).

Compression must be one whose data holds pixels only: none, CCITT (2, 3, 4), LZW, PackBits,
Deflate (8, 32946), LZMA, Zstandard, or JPEG (7). JPEG strips are JPEG streams that could carry
APP segments: each is checked while it is copied (``JpegDeidentifier`` in verify mode, which
fails the download before a metadata segment's first byte is sent), and JPEGTables is cleaned.
Old-style JPEG (6) and the JPEG 2000 variants, whose streams carry comment markers, are
refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vault.ingest.deid.failures import Malformed, UnsupportedFormat
from vault.ingest.deid.jpeg import JpegDeidentifier
from vault.ingest.deid.source import Plan, RangeSource, Span

TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
KEPT_TAGS = frozenset({
    254, 255,  # NewSubfileType, SubfileType
    256, 257, 258, 259, 262,  # ImageWidth, ImageLength, BitsPerSample, Compression, Photometric
    263, 264, 265, 266,  # Threshholding, CellWidth, CellLength, FillOrder
    273, 274, 277, 278, 279,  # StripOffsets, Orientation, SamplesPerPixel, RowsPerStrip, StripByteCounts
    280, 281, 282, 283, 284,  # Min/MaxSampleValue, X/YResolution, PlanarConfiguration
    290, 291, 292, 293, 296, 297,  # GrayResponse*, T4/T6Options, ResolutionUnit, PageNumber
    301, 317, 318, 319, 320, 321,  # TransferFunction, Predictor, WhitePoint, Primaries, ColorMap, Halftone
    322, 323, 324, 325,  # TileWidth, TileLength, TileOffsets, TileByteCounts
    332, 334, 338, 339, 340, 341, 342,  # InkSet, NumberOfInks, ExtraSamples, SampleFormat, SMin/SMax, TransferRange
    347,  # JPEGTables
    529, 530, 531, 532,  # YCbCrCoefficients, YCbCrSubSampling, YCbCrPositioning, ReferenceBlackWhite
    34675,  # ICC profile
})
STRIPS, STRIP_COUNTS, TILES, TILE_COUNTS = 273, 279, 324, 325
COMPRESSION, JPEG_TABLES = 259, 347
JPEG = 7
ALLOWED_COMPRESSION = frozenset({1, 2, 3, 4, 5, 7, 8, 32773, 32946, 34925, 50000})
MAX_IFDS = 4096
MAX_ENTRIES = 4096
MAX_VALUE = 64 << 20  # one tag's value (a big pyramid level's tile offsets are a few MB)


@dataclass(frozen=True)
class _Flavour:
    big: bool

    @property
    def header(self) -> int:
        return 16 if self.big else 8

    @property
    def count_size(self) -> int:
        return 8 if self.big else 2

    @property
    def entry(self) -> int:
        return 20 if self.big else 12

    @property
    def inline(self) -> int:
        return 8 if self.big else 4

    @property
    def offset_format(self) -> str:
        return "Q" if self.big else "I"

    @property
    def offset_type(self) -> int:
        return 16 if self.big else 4  # LONG8 or LONG


@dataclass
class _Ifd:
    entries: dict[int, tuple[int, int, bytes]]  # tag -> (type, count, value bytes)
    strips: list[tuple[int, int]]  # (offset, byte count) in the source
    offsets_tag: int
    jpeg: bool


def _numbers(e: str, kind: int, count: int, raw: bytes) -> list[int]:
    fmt = {3: "H", 4: "I", 16: "Q", 13: "I", 18: "Q"}.get(kind)
    if fmt is None:
        raise Malformed()
    return list(struct.unpack(f"{e}{count}{fmt}", raw))


async def _read_ifd(source: RangeSource, e: str, flavour: _Flavour, offset: int) -> tuple[_Ifd, int]:
    count_raw = await source.read(offset, offset + flavour.count_size)
    count = struct.unpack(e + ("Q" if flavour.big else "H"), count_raw)[0]
    if not 0 < count <= MAX_ENTRIES:
        raise Malformed()
    start = offset + flavour.count_size
    table = await source.read(start, start + count * flavour.entry + flavour.inline)
    entries: dict[int, tuple[int, int, bytes]] = {}
    for i in range(count):
        pos = i * flavour.entry
        if flavour.big:
            tag, kind, n = struct.unpack_from(e + "HHQ", table, pos)
        else:
            tag, kind, n = struct.unpack_from(e + "HHI", table, pos)
        if tag not in KEPT_TAGS or tag in entries:
            continue
        if kind not in TYPE_SIZES:
            raise Malformed()
        size = TYPE_SIZES[kind] * n
        if size > MAX_VALUE:
            raise Malformed()
        if not size:
            continue  # an empty value says nothing a decoder needs
        field = table[pos + flavour.entry - flavour.inline:pos + flavour.entry]
        if size <= flavour.inline:
            value = field[:size]
        else:
            at = struct.unpack(e + flavour.offset_format, field)[0]
            value = await source.read(at, at + size)
        entries[tag] = (kind, n, value)
    following = struct.unpack(e + flavour.offset_format, table[-flavour.inline:])[0]
    compression = _numbers(e, *entries[COMPRESSION])[0] if COMPRESSION in entries else 1
    if compression not in ALLOWED_COMPRESSION:
        raise UnsupportedFormat("this TIFF compression cannot be de-identified")
    pairs = [(o, c) for o, c in ((STRIPS, STRIP_COUNTS), (TILES, TILE_COUNTS)) if o in entries and c in entries]
    if len(pairs) != 1:
        raise Malformed()
    offsets_tag, counts_tag = pairs[0]
    offsets, counts = _numbers(e, *entries[offsets_tag]), _numbers(e, *entries[counts_tag])
    if len(offsets) != len(counts) or any(o + c > source.size for o, c in zip(offsets, counts)):
        raise Malformed()
    if compression == JPEG and JPEG_TABLES in entries:
        kind, _, tables = entries[JPEG_TABLES]
        cleaner = JpegDeidentifier()
        cleaned = cleaner.feed(tables) + cleaner.finish()
        entries[JPEG_TABLES] = (kind, len(cleaned), cleaned)
    return _Ifd(entries, list(zip(offsets, counts)), offsets_tag, compression == JPEG), following


async def tiff_plan(source: RangeSource) -> Plan:
    head = await source.read(0, 16) if source.size >= 16 else b""
    if head[:2] == b"II":
        e = "<"
    elif head[:2] == b"MM":
        e = ">"
    else:
        raise Malformed()
    magic = struct.unpack(e + "H", head[2:4])[0]
    if magic == 42:
        flavour, first = _Flavour(False), struct.unpack(e + "I", head[4:8])[0]
    elif magic == 43 and struct.unpack(e + "HH", head[4:8]) == (8, 0):
        flavour, first = _Flavour(True), struct.unpack(e + "Q", head[8:16])[0]
    else:
        raise Malformed()
    ifds: list[_Ifd] = []
    seen: set[int] = set()
    offset = first
    while offset:
        if offset in seen or len(ifds) >= MAX_IFDS:
            raise Malformed()
        seen.add(offset)
        ifd, offset = await _read_ifd(source, e, flavour, offset)
        ifds.append(ifd)
    if not ifds:
        raise Malformed()
    return _layout(e, flavour, ifds)


def _layout(e: str, flavour: _Flavour, ifds: list[_Ifd]) -> Plan:
    """Header, then each IFD and its values, then the data. Every IFD table has an even length
    (2 + 12n + 4, or 8 + 20n + 8) and every value is padded to one, so all stay word-aligned."""
    offset_size = TYPE_SIZES[flavour.offset_type]

    def table_size(ifd: _Ifd) -> int:
        return flavour.count_size + len(ifd.entries) * flavour.entry + flavour.inline

    def values_size(ifd: _Ifd) -> int:
        total = 0
        for tag, (_, n, value) in ifd.entries.items():
            size = n * offset_size if tag == ifd.offsets_tag else len(value)
            total += 0 if size <= flavour.inline else size + (size & 1)
        return total

    positions = []
    pos = flavour.header
    for ifd in ifds:
        positions.append(pos)
        pos += table_size(ifd) + values_size(ifd)
    data_at = pos
    pack_offset = e + flavour.offset_format
    out = bytearray(b"II" if e == "<" else b"MM")
    out += struct.pack(e + "HHHQ", 43, 8, 0, positions[0]) if flavour.big else struct.pack(e + "HI", 42, positions[0])
    for index, ifd in enumerate(ifds):
        new_offsets = []
        for _, count in ifd.strips:
            new_offsets.append(data_at)
            data_at += count
        entries = dict(ifd.entries)
        entries[ifd.offsets_tag] = (
            flavour.offset_type, len(new_offsets),
            struct.pack(f"{e}{len(new_offsets)}{flavour.offset_format}", *new_offsets),
        )
        table = bytearray(struct.pack(e + ("Q" if flavour.big else "H"), len(entries)))
        values = bytearray()
        values_at = positions[index] + table_size(ifd)
        for tag in sorted(entries):
            kind, n, value = entries[tag]
            table += struct.pack(e + ("HHQ" if flavour.big else "HHI"), tag, kind, n)
            if len(value) <= flavour.inline:
                table += value + bytes(flavour.inline - len(value))
            else:
                table += struct.pack(pack_offset, values_at + len(values))
                values += value + bytes(len(value) & 1)
        following = positions[index + 1] if index + 1 < len(ifds) else 0
        table += struct.pack(pack_offset, following)
        out += table + values
    if len(out) != pos:
        raise RuntimeError("TIFF layout does not add up")  # a bug here, never the input's fault
    plan = Plan()
    plan.add(bytes(out))
    for ifd in ifds:
        for offset, count in ifd.strips:
            plan.add(Span(offset, offset + count, jpeg=ifd.jpeg))
    return plan
