"""Metadata stripping at ingest: GPS gone, pixels byte-identical, streaming in any piece sizes."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import piexif
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from vault.ingest.exif import UnsafeExif, remove_gps
from vault.ingest.strip import JpegStripper, PngStripper, new_stripper

LATITUDE = ((51, 1), (30, 1), (2650, 100))
LONGITUDE = ((0, 1), (7, 1), (3961, 100))
# The rational bytes of the latitude, as piexif writes them (big-endian): must not survive.
GPS_BYTES = b"".join(struct.pack(">II", *r) for r in LATITUDE)
XMP_WITH_GPS = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><exif:GPSLatitude>51,30.4N</exif:GPSLatitude></x:xmpmeta>'


def picture() -> Image.Image:
    img = Image.new("RGB", (96, 64))
    img.putdata([((x * 7) % 256, (y * 11) % 256, (x * y) % 256) for y in range(64) for x in range(96)])
    return img


def exif_with_gps() -> bytes:
    return piexif.dump({
        "0th": {piexif.ImageIFD.Make: b"DermaCam", piexif.ImageIFD.Orientation: 6},
        "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2026:11:20 10:15:00"},
        "GPS": {
            piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: LATITUDE,
            piexif.GPSIFD.GPSLongitudeRef: b"W", piexif.GPSIFD.GPSLongitude: LONGITUDE,
        },
        "1st": {}, "thumbnail": None,
    })


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def iptc_dataset(record: int, dataset: int, value: bytes) -> bytes:
    return bytes([0x1C, record, dataset]) + struct.pack(">H", len(value)) + value


def photoshop_resource(resource_id: int, data: bytes) -> bytes:
    """One 8BIM image resource with an empty name, padded to even length."""
    return b"8BIM" + struct.pack(">H", resource_id) + b"\x00\x00" + struct.pack(">I", len(data)) + data + b"\x00" * (len(data) & 1)


# IPTC: a caption (2:120, not a location) and a city (2:90, a location).
IPTC_CITY = iptc_dataset(2, 90, b"IPTC-CITY-XQ")
IPTC_BLOCK = iptc_dataset(2, 120, b"IPTC-CAPTION-XQ") + IPTC_CITY


def jpeg_with_everything() -> bytes:
    """JPEG: APP1 EXIF with GPS, APP1 XMP mentioning GPS, APP13 IPTC, COM, then the image."""
    out = io.BytesIO()
    picture().save(out, "JPEG", exif=exif_with_gps(), quality=90)
    data = out.getvalue()
    extra = (
        segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + XMP_WITH_GPS)
        + segment(0xED, b"Photoshop 3.0\x00" + photoshop_resource(0x0404, IPTC_BLOCK))
        + segment(0xFE, b"taken at clinic XQ-COMMENT")
    )
    exif_end = 2 + 2 + struct.unpack(">H", data[4:6])[0]  # SOI, then Pillow's APP0/APP1...
    return data[:exif_end] + extra + data[exif_end:]


def png_with_everything() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "PNG-COMMENT-XQ")
    info.add_text("Location", "PNG-ZTXT-XQ", zip=True)
    info.add_itxt("XML:com.adobe.xmp", XMP_WITH_GPS.decode(), zip=True)
    out = io.BytesIO()
    picture().save(out, "PNG", pnginfo=info, exif=exif_with_gps())
    return out.getvalue()


def run(stripper, data: bytes, piece: int) -> bytes:
    out = b"".join(stripper.feed(data[i:i + piece]) for i in range(0, len(data), piece))
    return out + stripper.finish()


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        return img.tobytes()


def png_chunk_types(data: bytes) -> list[bytes]:
    types, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        types.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return types


@pytest.mark.parametrize("piece", [1, 3, 64, 4096, 1 << 20])
def test_gps_policy_removes_the_gps_ifd_keeps_other_exif_and_pixels(piece):
    original = jpeg_with_everything()
    stripper = JpegStripper("gps")
    stripped = run(stripper, original, piece)
    assert stripper.changed
    assert pixels(stripped) == pixels(original)
    exif = piexif.load(stripped)
    assert exif["GPS"] == {}
    assert exif["0th"][piexif.ImageIFD.Make] == b"DermaCam"
    assert exif["0th"][piexif.ImageIFD.Orientation] == 6
    assert exif["Exif"][piexif.ExifIFD.DateTimeOriginal] == b"2026:11:20 10:15:00"
    assert GPS_BYTES not in stripped and GPS_BYTES in original
    assert b"GPSLatitude" not in stripped  # the XMP packet that mentions GPS went too
    assert b"IPTC-CITY-XQ" not in stripped  # the IPTC city went, the rest of IPTC stays
    assert b"IPTC-CAPTION-XQ" in stripped and b"XQ-COMMENT" in stripped  # gps policy keeps them


def test_gps_rewrite_changes_no_length_so_nothing_else_moves():
    original = jpeg_with_everything()
    without_xmp = JpegStripper("gps")
    stripped = run(without_xmp, original, 1 << 20)
    xmp_segment = len(segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + XMP_WITH_GPS))
    # IPTC shrinks by the city dataset and its resource by one byte of even padding.
    iptc_shrink = len(photoshop_resource(0x0404, IPTC_BLOCK)) - len(photoshop_resource(0x0404, IPTC_BLOCK[:-len(IPTC_CITY)]))
    assert len(stripped) == len(original) - xmp_segment - iptc_shrink


@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_all_policy_drops_exif_xmp_iptc_and_comments_and_keeps_pixels(piece):
    original = jpeg_with_everything()
    stripped = run(JpegStripper("all"), original, piece)
    assert pixels(stripped) == pixels(original)
    with Image.open(io.BytesIO(stripped)) as img:
        assert dict(img.getexif()) == {}
        assert "comment" not in img.info
    for needle in (b"Exif\x00\x00", b"DermaCam", b"GPSLatitude", b"IPTC-CITY-XQ", b"XQ-COMMENT", GPS_BYTES):
        assert needle not in stripped
    assert stripped[:2] == b"\xff\xd8" and stripped[-2:] == b"\xff\xd9"


def test_none_policy_has_no_stripper_so_bytes_pass_unchanged():
    assert new_stripper("image/jpeg", "none") is None
    assert new_stripper("image/png", "none") is None
    assert new_stripper("image/tiff", "gps") is None  # only JPEG and PNG are rewritten


@pytest.mark.parametrize("piece", [1, 5, 1 << 20])
def test_png_gps_policy_rewrites_exif_and_drops_xmp_with_gps(piece):
    original = png_with_everything()
    stripped = run(PngStripper("gps"), original, piece)
    assert pixels(stripped) == pixels(original)
    with Image.open(io.BytesIO(stripped)) as img:
        img.load()
        assert dict(img.getexif().get_ifd(0x8825)) == {}
        assert img.getexif()[0x010F] == "DermaCam"
        assert img.info["Comment"] == "PNG-COMMENT-XQ"
        assert "XML:com.adobe.xmp" not in img.info
    assert GPS_BYTES not in stripped
    assert png_chunk_types(stripped).count(b"eXIf") == 1


@pytest.mark.parametrize("piece", [1, 5, 1 << 20])
def test_png_all_policy_drops_exif_and_every_text_chunk(piece):
    original = png_with_everything()
    stripped = run(PngStripper("all"), original, piece)
    assert pixels(stripped) == pixels(original)
    kinds = png_chunk_types(stripped)
    assert not {b"eXIf", b"tEXt", b"iTXt", b"zTXt"} & set(kinds)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    for needle in (b"PNG-COMMENT-XQ", b"DermaCam", GPS_BYTES):
        assert needle not in stripped


def test_png_text_after_idat_is_stripped_too():
    original = png_with_everything()
    iend = original.rindex(b"IEND") - 4
    late = b"late comment XQ-LATE"
    chunk = struct.pack(">I", len(b"Comment\x00" + late)) + b"tEXt" + b"Comment\x00" + late
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + b"Comment\x00" + late))
    with_late = original[:iend] + chunk + original[iend:]
    assert b"XQ-LATE" not in run(PngStripper("all"), with_late, 3)


def test_data_after_the_end_passes_through_unchanged():
    original = png_with_everything() + b"trailing bytes"
    assert run(PngStripper("all"), original, 4).endswith(b"trailing bytes")


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=12))
def test_output_does_not_depend_on_how_the_input_is_split(cuts):
    for make, cls in ((jpeg_with_everything, JpegStripper), (png_with_everything, PngStripper)):
        data = make()
        for policy in ("gps", "all"):
            whole = run(cls(policy), data, len(data))
            stripper, pos, parts = cls(policy), 0, []
            for cut in cuts:
                parts.append(stripper.feed(data[pos:pos + cut]))
                pos += cut
            parts.append(stripper.feed(data[pos:]))
            parts.append(stripper.finish())
            assert b"".join(parts) == whole


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000))
def test_arbitrary_bytes_never_raise_and_non_images_pass_unchanged(data):
    for cls in (JpegStripper, PngStripper):
        for policy in ("gps", "all"):
            out = run(cls(policy), data, 97)
            if not data.startswith((b"\xff\xd8", b"\x89PNG")):
                assert out == data


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=0, max_value=3000))
def test_truncated_images_never_raise_and_never_emit_half_a_metadata_segment(cut):
    for make, cls in ((jpeg_with_everything, JpegStripper), (png_with_everything, PngStripper)):
        data = make()[:cut]
        out = run(cls("all"), data, 64)
        assert b"XQ-COMMENT" not in out and b"PNG-COMMENT-XQ" not in out


def test_gps_ifd_overlapping_other_exif_data_drops_the_whole_exif_block():
    tiff = bytearray(exif_with_gps()[6:])
    # Point the GPS IFD at IFD0 itself: zeroing it would destroy IFD0, so refuse.
    ifd0 = struct.unpack(">I", tiff[4:8])[0]
    count = struct.unpack(">H", tiff[ifd0:ifd0 + 2])[0]
    for i in range(count):
        pos = ifd0 + 2 + 12 * i
        if struct.unpack(">H", tiff[pos:pos + 2])[0] == 0x8825:
            tiff[pos + 8:pos + 12] = struct.pack(">I", ifd0)
    with pytest.raises(UnsafeExif):
        remove_gps(bytes(tiff))
    jpeg = b"\xff\xd8" + segment(0xE1, b"Exif\x00\x00" + bytes(tiff)) + b"\xff\xda\x00\x02rest"
    stripped = run(JpegStripper("gps"), jpeg, 10)
    assert stripped == b"\xff\xd8\xff\xda\x00\x02rest"


def test_exif_without_gps_is_left_byte_identical():
    tiff = piexif.dump({"0th": {piexif.ImageIFD.Make: b"X"}, "Exif": {}, "GPS": {}, "1st": {}, "thumbnail": None})[6:]
    assert remove_gps(tiff) == tiff


def test_little_endian_exif_is_rewritten_too():
    built = Image.Exif()
    built.endian = "<"  # "Exif\0\0" then a little-endian TIFF, "II*\0"
    built[0x010F] = "DermaCam"
    built.get_ifd(0x8825).update({1: "N", 2: (51.0, 30.0, 26.5)})
    little = built.tobytes()[6:]
    assert little[:4] == b"II*\x00"
    stripped = remove_gps(little)
    assert len(stripped) == len(little) and stripped != little
    exif = Image.Exif()
    exif.load(b"Exif\x00\x00" + stripped)
    assert dict(exif.get_ifd(0x8825)) == {}
    assert exif[0x010F] == "DermaCam"


def test_digest_of_stripped_output_differs_only_when_something_changed():
    plain = io.BytesIO()
    picture().save(plain, "JPEG")
    data = plain.getvalue()
    stripper = JpegStripper("gps")
    assert run(stripper, data, 100) == data and not stripper.changed
    assert hashlib.sha256(run(JpegStripper("all"), data, 100)).digest() == hashlib.sha256(data).digest()
