"""Location data outside the EXIF GPS IFD: XMP property names in any encoding, and the IPTC
location datasets inside Photoshop image resources (JPEG APP13).

XMP is XML, serialised in UTF-8, UTF-16 or UTF-32 of either byte order. A packet that gives a
position or a place names the property that holds it, and XML names cannot be written as
character references, so the name is in the packet literally, in the packet's own encoding:
``mentions_location`` looks for each name in each encoding. The names are matched without
their namespace prefix, so ``exif:GPSLatitude`` and ``ns0:GPSLatitude`` are both found. A false
positive only drops a packet that held no location.

Photoshop image resources (Adobe Photoshop File Formats, "Image Resource Blocks"), after the
``Photoshop 3.0\\0`` header of a JPEG APP13 segment, are a sequence of::

    signature (4, "8BIM") || id (2) || name (Pascal string, padded to even length)
    || size (4) || data (size bytes, padded to even length)

``remove_location_from_resources`` rewrites that sequence: the IPTC-NAA resource (0x0404) loses
its location datasets, an XMP resource (0x0424) naming a location is dropped, an EXIF resource
(0x0422, 0x0423) loses its GPS IFD (or is dropped, as in APP1), and the IPTC digest (0x0425), an
MD5 of the IPTC block, goes when that block changed (it would no longer match). IPTC IIM
datasets (IPTC-NAA IIM 4.2, chapter 6) are ``0x1C || record (1) || dataset (1) || length (2)
|| data``; a length with its top bit set is the size of a longer length field that follows.
"""

from __future__ import annotations

import struct

from vault.ingest.exif import UnsafeExif, remove_gps

# XMP property names (any namespace prefix) that hold a position or a place: exif:GPS*,
# drone-dji:Gps*, photoshop:City/State/Country, Iptc4xmpCore:Location/CountryCode,
# Iptc4xmpExt:LocationCreated/LocationShown/Sublocation/ProvinceState/CountryName, and the
# Latitude/Longitude of other vocabularies.
LOCATION_NAMES = ("GPS", "Gps", "City", "State", "Country", "Location", "location", "Latitude", "Longitude")
_LOCATION_NEEDLES = tuple(
    name.encode(encoding)
    for name in LOCATION_NAMES
    for encoding in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
)

PHOTOSHOP_HEADER = b"Photoshop 3.0\x00"
_SIGNATURES = (b"8BIM", b"PHUT", b"AgHg", b"DCSR", b"MeSa")
IPTC_NAA, EXIF_DATA_1, EXIF_DATA_3, XMP_DATA, IPTC_DIGEST = 0x0404, 0x0422, 0x0423, 0x0424, 0x0425
# IPTC IIM record 2 datasets that name a place: Content Location Code (26) and Name (27), City
# (90), Sub-location (92), Province/State (95), Country Code (100), Country Name (101).
IPTC_LOCATION_DATASETS = frozenset({26, 27, 90, 92, 95, 100, 101})
EXIF_HEADER = b"Exif\x00\x00"


class UnsafeResources(ValueError):
    """The resources (or the IPTC block in them) do not parse: drop the whole segment."""


def mentions_location(data: bytes) -> bool:
    """Whether an XMP packet (or any text) names a location property, in UTF-8, UTF-16 or
    UTF-32 of either byte order."""
    return any(needle in data for needle in _LOCATION_NEEDLES)


def _padding_only(data: bytes) -> bool:
    return not data.strip(b"\x00")


def iptc_datasets(block: bytes) -> list[tuple[int, int, int, int]]:
    """(record, dataset, start, end) of each dataset of an IPTC IIM block, [start, end) spanning
    the whole dataset, its marker included. Trailing zero padding is allowed."""
    found = []
    pos = 0
    while pos < len(block):
        if block[pos] != 0x1C:
            if _padding_only(block[pos:]):
                break
            raise UnsafeResources("IPTC dataset marker expected")
        if pos + 5 > len(block):
            raise UnsafeResources("IPTC dataset header cut short")
        record, dataset, length = block[pos + 1], block[pos + 2], struct.unpack_from(">H", block, pos + 3)[0]
        start = pos
        pos += 5
        if length & 0x8000:  # extended dataset: the low bits give the size of the length field
            size = length & 0x7FFF
            if not 1 <= size <= 4 or pos + size > len(block):
                raise UnsafeResources("bad IPTC extended length")
            length = int.from_bytes(block[pos:pos + size], "big")
            pos += size
        pos += length
        if pos > len(block):
            raise UnsafeResources("IPTC dataset runs past the end")
        found.append((record, dataset, start, pos))
    return found


def remove_iptc_location(block: bytes) -> bytes:
    """The IPTC IIM block without its location datasets (``block`` itself when it has none)."""
    datasets = iptc_datasets(block)
    kept = [(start, end) for record, dataset, start, end in datasets
            if not (record == 2 and dataset in IPTC_LOCATION_DATASETS)]
    if len(kept) == len(datasets):
        return block
    return b"".join(block[start:end] for start, end in kept)


def image_resources(data: bytes) -> list[tuple[bytes, int, bytes, bytes]]:
    """(signature, id, name field as stored, resource data) of each Photoshop image resource."""
    found = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 12 and _padding_only(data[pos:]):
            break
        signature = data[pos:pos + 4]
        if signature not in _SIGNATURES or pos + 7 > len(data):
            raise UnsafeResources("not an image resource")
        resource_id = struct.unpack_from(">H", data, pos + 4)[0]
        name_length = data[pos + 6]
        name_field = 1 + name_length + ((1 + name_length) & 1)
        name_end = pos + 6 + name_field
        if name_end + 4 > len(data):
            raise UnsafeResources("image resource header cut short")
        size = struct.unpack_from(">I", data, name_end)[0]
        start = name_end + 4
        if start + size > len(data):
            raise UnsafeResources("image resource runs past the end")
        found.append((signature, resource_id, data[pos + 6:name_end], data[start:start + size]))
        pos = start + size + (size & 1)
    return found


def _resource(signature: bytes, resource_id: int, name_field: bytes, body: bytes) -> bytes:
    return signature + struct.pack(">H", resource_id) + name_field + struct.pack(">I", len(body)) + body + b"\x00" * (len(body) & 1)


def _without_gps(body: bytes) -> bytes | None:
    prefix = EXIF_HEADER if body.startswith(EXIF_HEADER) else b""
    try:
        return prefix + remove_gps(body[len(prefix):])
    except UnsafeExif:
        return None


def remove_location_from_resources(payload: bytes) -> bytes:
    """A JPEG APP13 payload without location data (``payload`` itself when it has none);
    ``UnsafeResources`` when it is not Photoshop image resources that parse."""
    if not payload.startswith(PHOTOSHOP_HEADER):
        raise UnsafeResources("not Photoshop 3.0 image resources")
    resources = image_resources(payload[len(PHOTOSHOP_HEADER):])
    rebuilt: list[tuple[bytes, int, bytes, bytes]] = []
    iptc_changed = changed = False
    for signature, resource_id, name_field, body in resources:
        new: bytes | None = body
        if signature == b"8BIM" and resource_id == IPTC_NAA:
            new = remove_iptc_location(body)
            iptc_changed = new != body
        elif signature == b"8BIM" and resource_id == XMP_DATA:
            new = None if mentions_location(body) else body
        elif signature == b"8BIM" and resource_id in (EXIF_DATA_1, EXIF_DATA_3):
            new = _without_gps(body)
        changed |= new != body
        if new is not None:
            rebuilt.append((signature, resource_id, name_field, new))
    if iptc_changed:
        rebuilt = [r for r in rebuilt if not (r[0] == b"8BIM" and r[1] == IPTC_DIGEST)]
    if not changed:
        return payload
    return PHOTOSHOP_HEADER + b"".join(_resource(*r) for r in rebuilt)
