"""The default ``gps`` stripping finds location in every encoding: XMP in UTF-8/16/32 (main and
extended packets, APP1 or Photoshop resources), IPTC location datasets; the rest stays."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest

from tests.conftest import sample_metadata
from tests.ingest.test_strip import (
    IPTC_CITY, iptc_dataset, jpeg_with_everything, photoshop_resource, pixels, png_chunk_types, run, segment,
)
from vault.ingest.location import (
    UnsafeResources, iptc_datasets, mentions_location, remove_iptc_location, remove_location_from_resources,
)
from vault.ingest.strip import JpegStripper, PngStripper

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EXTENSION_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"
GUID = b"0123456789ABCDEF0123456789ABCDEF"
PLACE = "Rue-de-la-Clinique-QZ7"
LOCATED = (
    '<?xpacket begin="\ufeff"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
    f'photoshop:City="{PLACE}" exif:GPSLatitude="51,30.4N"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)
UNLOCATED = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:creator>XMP-KEPT-QZ7</dc:creator></x:xmpmeta>'
ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "utf-16", "utf-32-le", "utf-32-be")


def forms(text: str) -> list[bytes]:
    return [text.encode(e) for e in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")]


def with_segments(*segments: bytes) -> bytes:
    """The test JPEG with ``segments`` inserted right after its APP0."""
    data = jpeg_with_everything()
    app0_end = 4 + struct.unpack(">H", data[4:6])[0]
    return data[:app0_end] + b"".join(segments) + data[app0_end:]


def extension(chunk: bytes, total: int, offset: int) -> bytes:
    return segment(0xE1, EXTENSION_HEADER + GUID + struct.pack(">II", total, offset) + chunk)


def absent(needle: str, data: bytes) -> bool:
    return not any(form in data for form in forms(needle))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_location_property_is_found_in_every_unicode_encoding(encoding):
    assert mentions_location(LOCATED.encode(encoding))
    assert not mentions_location(UNLOCATED.encode(encoding))


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("piece", [1, 13, 1 << 20])
def test_gps_policy_drops_an_xmp_packet_with_a_location_in_any_encoding(encoding, piece):
    original = with_segments(segment(0xE1, XMP_HEADER + LOCATED.encode(encoding)))
    stripped = run(JpegStripper("gps"), original, piece)
    assert absent(PLACE, stripped) and absent("GPSLatitude", stripped)
    assert pixels(stripped) == pixels(original)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_gps_policy_keeps_an_xmp_packet_without_location_in_any_encoding(encoding):
    packet = segment(0xE1, XMP_HEADER + UNLOCATED.encode(encoding))
    original = with_segments(packet)
    assert packet in run(JpegStripper("gps"), original, 7)


def test_extended_xmp_is_judged_as_one_text_even_when_a_name_is_cut_at_a_segment_boundary():
    text = f'<rdf:Description photoshop:City="{PLACE}"/>'.encode("utf-16-le")
    cut = text.index("City".encode("utf-16-le")) + 3  # inside "City"
    first, second = text[:cut], text[cut:]
    assert not mentions_location(first) and not mentions_location(second)
    original = with_segments(
        segment(0xE1, XMP_HEADER + UNLOCATED.encode()),
        extension(first, len(text), 0),
        extension(second, len(text), len(first)),
    )
    stripper = JpegStripper("gps")
    stripped = run(stripper, original, 5)
    assert absent(PLACE, stripped) and EXTENSION_HEADER not in stripped
    assert UNLOCATED.encode() in stripped  # the main packet had no location: it stays
    assert pixels(stripped) == pixels(original)


def test_extended_xmp_without_location_is_kept_in_order():
    parts = [b"<x:a>EXT-ONE-QZ7</x:a>", b"<x:b>EXT-TWO-QZ7</x:b>"]
    segments = [extension(parts[0], 40, 0), extension(parts[1], 40, len(parts[0]))]
    original = with_segments(segment(0xE1, XMP_HEADER + UNLOCATED.encode()), *segments)
    stripped = run(JpegStripper("gps"), original, 3)
    assert b"".join(segments) in stripped


def test_extended_xmp_goes_with_a_main_packet_that_names_a_location():
    original = with_segments(segment(0xE1, XMP_HEADER + LOCATED.encode()), extension(b"<x:a>EXT-QZ7</x:a>", 20, 0))
    stripped = run(JpegStripper("gps"), original, 64)
    assert b"EXT-QZ7" not in stripped and absent(PLACE, stripped)


def test_iptc_location_datasets_are_removed_and_the_rest_kept():
    caption = iptc_dataset(2, 120, b"IPTC-CAPTION-QZ7")
    byline = iptc_dataset(2, 80, b"IPTC-BYLINE-QZ7")
    places = [iptc_dataset(2, n, f"IPTC-PLACE-{n}-QZ7".encode()) for n in (26, 27, 90, 92, 95, 100, 101)]
    block = caption + b"".join(places[:4]) + byline + b"".join(places[4:]) + b"\x00\x00"
    assert remove_iptc_location(block) == caption + byline
    assert remove_iptc_location(caption + byline) == caption + byline


def test_iptc_extended_length_datasets_are_parsed():
    long_value = b"x" * 40000
    extended = bytes([0x1C, 2, 120]) + struct.pack(">H", 0x8004) + struct.pack(">I", len(long_value)) + long_value
    block = extended + IPTC_CITY
    assert [(r, d) for r, d, _, _ in iptc_datasets(block)] == [(2, 120), (2, 90)]
    assert remove_iptc_location(block) == extended


@pytest.mark.parametrize("bad", [b"\x1c\x02", b"\x1c\x02\x78\x00\x10short", b"\x1c\x02\x78\x80\x09", b"junk"])
def test_iptc_that_does_not_parse_makes_the_resources_unsafe(bad):
    with pytest.raises(UnsafeResources):
        remove_location_from_resources(b"Photoshop 3.0\x00" + photoshop_resource(0x0404, bad))


def test_photoshop_resources_lose_location_in_iptc_xmp_and_exif_and_the_stale_iptc_digest():
    caption = iptc_dataset(2, 120, b"IPTC-CAPTION-QZ7")
    digest = hashlib.md5(caption + IPTC_CITY).digest()
    other = photoshop_resource(0x03ED, b"\x00\x48\x00\x00\x00\x01\x00\x01\x00\x48\x00\x00\x00\x01\x00\x01")
    payload = b"Photoshop 3.0\x00" + (
        photoshop_resource(0x0404, caption + IPTC_CITY) + photoshop_resource(0x0425, digest)
        + photoshop_resource(0x0424, LOCATED.encode("utf-16")) + other
    )
    rewritten = remove_location_from_resources(payload)
    assert rewritten == b"Photoshop 3.0\x00" + photoshop_resource(0x0404, caption) + other
    unchanged = b"Photoshop 3.0\x00" + photoshop_resource(0x0404, caption) + photoshop_resource(0x0425, b"d" * 16)
    assert remove_location_from_resources(unchanged) is unchanged


def test_an_app13_segment_that_does_not_parse_is_dropped_under_gps():
    original = with_segments(segment(0xED, b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x0fIPTC-CITY-QZ7xx"))
    stripped = run(JpegStripper("gps"), original, 11)
    assert b"IPTC-CITY-QZ7" not in stripped and pixels(stripped) == pixels(original)


def text_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32-be"])
def test_png_xmp_with_a_location_in_utf16_or_utf32_is_dropped(encoding):
    from tests.ingest.test_strip import png_with_everything

    png = png_with_everything()
    iend = png.rindex(b"IEND") - 4
    compressed = text_chunk(b"zTXt", b"XML:com.adobe.xmp\x00\x00" + zlib.compress(LOCATED.encode(encoding)))
    plain = text_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + LOCATED.encode(encoding))
    original = png[:iend] + compressed + plain + png[iend:]
    stripped = run(PngStripper("gps"), original, 9)
    assert absent(PLACE, stripped) and pixels(stripped) == pixels(original)
    assert png_chunk_types(stripped)[-1] == b"IEND"


async def test_uploads_under_the_default_policy_store_no_utf16_xmp_location_and_no_iptc_place(api):
    assert api.service.config.strip_metadata == "gps"
    caption = iptc_dataset(2, 120, b"IPTC-CAPTION-QZ7")
    places = b"".join(iptc_dataset(2, n, f"IPTC-PLACE-{n}-QZ7".encode()) for n in (90, 92, 95, 100, 101))
    original = with_segments(
        segment(0xE1, XMP_HEADER + LOCATED.encode("utf-16")),
        segment(0xED, b"Photoshop 3.0\x00" + photoshop_resource(0x0404, caption + places)),
    )
    record = await api.upload(original, sample_metadata())
    response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
    stored = await response.read()
    assert absent(PLACE, stored) and b"QZ7" in stored  # the caption stayed
    assert b"IPTC-CAPTION-QZ7" in stored and b"IPTC-PLACE" not in stored
    assert record["received_sha256"] == hashlib.sha256(original).hexdigest()
    assert pixels(stored) == pixels(original)
