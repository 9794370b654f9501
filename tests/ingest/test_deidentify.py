"""The de-identifiers one by one: whitelists, framing checks, verify mode, the DICOM profile's
choices and safety nets, and that nothing is ever half-emitted."""

from __future__ import annotations

import io
import struct

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset

from tests.ingest import crafted
from tests.ingest.crafted import pixels, riff_chunk, survivors
from tests.ingest.test_strip import segment
from vault.errors import NotDeidentifiable
from vault.ingest.deid import deidentify
from vault.ingest.deid.dicom import MAX_DICOM, deidentify_dicom
from vault.ingest.deid.failures import Malformed, MetadataInStream, TooLargeToDeidentify, UnsupportedFormat
from vault.ingest.deid.jpeg import JpegDeidentifier
from vault.ingest.deid.png import PngDeidentifier
from vault.ingest.deid.profile import BASIC_PROFILE

SALT = b"01JTESTRECORD0000000000000"


def run(deidentifier, data: bytes, piece: int) -> bytes:
    out = b"".join(deidentifier.feed(data[i:i + piece]) for i in range(0, len(data), piece))
    return out + deidentifier.finish()


def stream_of(data: bytes, piece: int = 1000):
    async def stream(start: int, end: int):
        for i in range(start, end, piece):
            yield data[i:min(end, i + piece)]
    return stream


async def copy_of(content_type: str, data: bytes, salt: bytes = SALT) -> bytes:
    result = await deidentify(content_type, len(data), stream_of(data), salt)
    out = b"".join([piece async for piece in result.chunks])
    assert result.size in (None, len(out))
    return out


def plain_jpeg() -> bytes:
    out = io.BytesIO()
    crafted.picture().save(out, "JPEG", quality=90)
    return out.getvalue()


# JPEG ----------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=10))
def test_jpeg_copy_does_not_depend_on_how_the_input_is_split(cuts):
    data = crafted.jpeg_with_identifiers()
    whole = run(JpegDeidentifier(), data, len(data))
    deidentifier, pos, parts = JpegDeidentifier(), 0, []
    for cut in cuts:
        parts.append(deidentifier.feed(data[pos:pos + cut]))
        pos += cut
    parts.append(deidentifier.feed(data[pos:]))
    parts.append(deidentifier.finish())
    assert b"".join(parts) == whole and survivors(whole) == []


def test_a_jpeg_without_metadata_is_copied_byte_for_byte():
    data = plain_jpeg()
    deidentifier = JpegDeidentifier()
    assert run(deidentifier, data, 97) == data and not deidentifier.changed


def test_jfif_loses_its_thumbnail_and_icc_and_adobe_segments_stay():
    data = plain_jpeg()
    thumbnail = bytes(range(48)) * 2  # 4 x 8 pixels of RGB
    jfif = b"JFIF\x00\x01\x02\x00\x00\x48\x00\x48\x08\x04" + thumbnail
    icc = segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + b"profile")
    adobe = segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01")
    original = data[:2] + segment(0xE0, jfif) + icc + adobe + data[data.index(b"\xff\xdb"):]
    out = run(JpegDeidentifier(), original, 13)
    assert segment(0xE0, jfif[:12] + b"\x00\x00") in out and thumbnail not in out
    assert icc in out and adobe in out


@pytest.mark.parametrize("bad", [
    b"GIF89a",  # no SOI
    b"\xff\xd8\xff\xd8",  # SOI twice
    b"\xff\xd8\xff\xe1\x00\x01",  # a segment length below 2
    b"\xff\xd8\x00\x00",  # not a marker
])
def test_jpeg_framing_errors_are_malformed(bad):
    with pytest.raises(Malformed):
        run(JpegDeidentifier(), bad + b"\xff\xd9", 3)


@pytest.mark.parametrize("cut", [2, 100, -2])
def test_a_jpeg_that_ends_before_eoi_is_malformed(cut):
    data = plain_jpeg()[:cut]
    with pytest.raises(Malformed):
        run(JpegDeidentifier(), data, 50)


def test_verify_mode_fails_before_any_byte_of_a_metadata_segment_is_emitted():
    data = plain_jpeg()
    app1 = segment(0xE1, b"Exif\x00\x00" + crafted.ident("VERIFY-EXIF").encode())
    original = data[:2] + app1 + data[2:]
    deidentifier = JpegDeidentifier(verify=True)
    emitted = b""
    with pytest.raises(MetadataInStream):
        for i in range(0, len(original), 5):
            emitted += deidentifier.feed(original[i:i + 5])
    assert emitted == b"\xff\xd8" and survivors(emitted) == []
    assert run(JpegDeidentifier(verify=True), data, 5) == data


# PNG -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_png_keeps_pixel_chunks_and_renames_the_icc_profile(piece):
    original = crafted.png_with_identifiers()
    out = run(PngDeidentifier(), original, piece)
    assert survivors(out) == [] and pixels(out) == pixels(original)
    with Image.open(io.BytesIO(out)) as img:
        assert img.info["icc_profile"]
    assert b"iCCPICC profile\x00" in out


@pytest.mark.parametrize("bad", [
    b"\x89PNX\r\n\x1a\n",  # signature
    b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 1 << 31) + b"IDAT",  # chunk length
    b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 0) + b"ID1T" + b"\x00" * 4,  # chunk type
])
def test_png_framing_errors_are_malformed(bad):
    with pytest.raises(Malformed):
        run(PngDeidentifier(), bad, 4)


def test_a_png_without_iend_is_malformed():
    data = crafted.png_with_identifiers()
    with pytest.raises(Malformed):
        run(PngDeidentifier(), data[:data.index(b"IEND\xae") - 4], 100)


# WebP ----------------------------------------------------------------------------------------
async def test_webp_frames_lose_unknown_sub_chunks_and_keep_their_pixels():
    original = crafted.webp_with_identifiers(animated=True)
    out = await copy_of("image/webp", original)
    assert survivors(out) == [] and b"QXFR" not in out and b"EXIF" not in out
    vp8x_flags = out[20]
    assert not vp8x_flags & 0x0C and vp8x_flags & 0x02  # EXIF and XMP flags off, animation on


@pytest.mark.parametrize("bad", [
    b"RIFF\x00\x00\x00\x00WEBP",  # RIFF size below 4
    b"RIFF\xff\x00\x00\x00WEBP",  # RIFF size past the end
    b"RIFF\x14\x00\x00\x00WEBP" + riff_chunk(b"VP8L", b"x" * 20)[:12],  # chunk past the RIFF end
    b"RIFF\x04\x00\x00\x00WAVE",
])
async def test_webp_framing_errors_are_malformed(bad):
    with pytest.raises(Malformed):
        await copy_of("image/webp", bad)


# TIFF ----------------------------------------------------------------------------------------
def tiff_with_compression(tag_value: int) -> bytes:
    out = io.BytesIO()
    crafted.picture(8, 8).save(out, "TIFF")
    data = bytearray(out.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        pos = ifd + 2 + 12 * i
        if struct.unpack("<H", data[pos:pos + 2])[0] == 259:
            data[pos + 8:pos + 10] = struct.pack("<H", tag_value)
    return bytes(data)


@pytest.mark.parametrize("compression", [6, 34712, 33003])
async def test_tiff_compressions_whose_streams_carry_text_are_refused(compression):
    with pytest.raises(UnsupportedFormat):
        await copy_of("image/tiff", tiff_with_compression(compression))


async def test_a_tiff_ifd_loop_and_strips_past_the_end_are_malformed():
    out = io.BytesIO()
    crafted.picture(8, 8).save(out, "TIFF")
    data = bytearray(out.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[ifd:ifd + 2])[0]
    looped = bytearray(data)
    looped[ifd + 2 + 12 * count:ifd + 6 + 12 * count] = struct.pack("<I", ifd)
    with pytest.raises(Malformed):
        await copy_of("image/tiff", bytes(looped))
    with pytest.raises(Malformed):
        await copy_of("image/tiff", bytes(data[:-10]))  # the strip now runs past the end


async def test_a_jpeg_tiff_strip_with_an_app_segment_stops_the_copy_before_that_segment():
    original = crafted.tiff_with_identifiers("jpeg")
    strip_soi = original.index(b"\xff\xd8\xff")
    # Overwrite the strip's first marker segment with an APP1 of the same length.
    length = struct.unpack(">H", original[strip_soi + 4:strip_soi + 6])[0]
    app1 = b"\xff\xe1" + struct.pack(">H", length) + crafted.ident("STRIP-APP1").encode().ljust(length - 2, b"_")
    tampered = original[:strip_soi + 2] + app1 + original[strip_soi + 4 + length:]
    result = await deidentify("image/tiff", len(tampered), stream_of(tampered, 64), SALT)
    emitted = b""
    with pytest.raises(MetadataInStream):
        async for piece in result.chunks:
            emitted += piece
    assert survivors(emitted) == [] and emitted  # headers went out, the APP1 did not


# DICOM ---------------------------------------------------------------------------------------
def dicom_dataset(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def rewrite(data: bytes, change) -> bytes:
    ds = dicom_dataset(data)
    change(ds)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_the_profile_table_has_the_standards_actions():
    assert len(BASIC_PROFILE) > 400
    assert BASIC_PROFILE[0x00100010] == "Z"  # Patient's Name
    assert BASIC_PROFILE[0x00100020] == "Z"  # Patient ID
    assert BASIC_PROFILE[0x00101000] == "X"  # Other Patient IDs
    assert BASIC_PROFILE[0x00080080] == "X/Z/D"  # Institution Name
    assert BASIC_PROFILE[0x00080018] == "U"  # SOP Instance UID
    assert BASIC_PROFILE[0x00081140] == "X/Z/U*"  # Referenced Image Sequence
    assert 0x00080016 not in BASIC_PROFILE  # SOP Class UID is kept


def test_uids_are_replaced_the_same_way_for_one_record_and_differently_for_another():
    data = crafted.dicom_with_identifiers()
    first, again, other = deidentify_dicom(data, SALT), deidentify_dicom(data, SALT), deidentify_dicom(data, b"other")
    assert first == again
    assert dicom_dataset(first).SOPInstanceUID != dicom_dataset(other).SOPInstanceUID
    assert dicom_dataset(first).StudyInstanceUID.startswith("2.25.")


def test_names_and_uids_beyond_the_table_are_caught_by_vr():
    def add(ds: Dataset) -> None:
        ds.add_new(0x00142006, "PN", "QX9^EVALUATOR")  # Evaluator Name: not in the 2020 table
        ds.add_new(0x00080017, "UI", "1.2.3.4.5.6.7")  # Acquisition UID: newer than the table
        ds.add_new(0x0008010C, "UI", "2.16.840.1.113883.6.96")  # Coding Scheme UID (SNOMED): not an instance
    out = deidentify_dicom(rewrite(crafted.dicom_with_identifiers(), add), SALT)
    ds = dicom_dataset(out)
    assert not ds[0x00142006].value and b"EVALUATOR" not in out
    assert ds[0x00080017].value != "1.2.3.4.5.6.7" and ds[0x00080017].value.startswith("2.25.")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.4"


@pytest.mark.parametrize("encapsulated, change", [
    (False, lambda ds: setattr(ds, "BurnedInAnnotation", "YES")),
    (False, lambda ds: delattr(ds, "PixelData")),
    (True, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", pydicom.uid.JPEG2000)),
])
def test_dicom_objects_the_profile_cannot_cover_are_refused(encapsulated, change):
    data = rewrite(crafted.dicom_with_identifiers(encapsulated), change)
    with pytest.raises(UnsupportedFormat):
        deidentify_dicom(data, SALT)


def test_a_file_without_the_dicm_prefix_or_cut_short_is_refused():
    data = crafted.dicom_with_identifiers()
    with pytest.raises(Malformed):
        deidentify_dicom(data[128:], SALT)
    for cut in (131, 300, len(data) // 2, len(data) - 1):
        with pytest.raises(NotDeidentifiable):
            deidentify_dicom(data[:cut], SALT)
    encapsulated = crafted.dicom_with_identifiers(encapsulated=True)
    with pytest.raises(NotDeidentifiable):
        deidentify_dicom(encapsulated[:len(encapsulated) - 40], SALT)


async def test_dicom_larger_than_the_memory_cap_is_refused_before_it_is_read():
    async def never(start: int, end: int):
        raise AssertionError("read")
        yield b""
    with pytest.raises(TooLargeToDeidentify):
        await deidentify("application/dicom", MAX_DICOM + 1, never, SALT)


# The entry point -------------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", ["image/heic", "model/obj", "model/ply", "application/octet-stream"])
async def test_other_types_are_refused_before_anything_is_read(content_type):
    async def never(start: int, end: int):
        raise AssertionError("read")
        yield b""
    with pytest.raises(UnsupportedFormat):
        await deidentify(content_type, 10, never, SALT)


async def test_an_unexpected_failure_inside_a_parser_is_reported_as_not_deidentifiable():
    data = crafted.png_with_identifiers()

    async def faulty(start: int, end: int):
        yield data[start:start + 100]
        raise ValueError("a bug, not a malformed file")
    result = await deidentify("image/png", len(data), faulty, SALT)
    with pytest.raises(NotDeidentifiable):
        async for _ in result.chunks:
            pass


# Plans -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("piece", [1, 7, 100, 1 << 20])
async def test_a_run_of_adjacent_spans_is_read_once_and_each_jpeg_span_checked_alone(piece):
    from vault.ingest.deid.source import Plan, RangeSource, Span

    tile = plain_jpeg()
    raw = b"raw pixel bytes"
    data = tile + tile + raw
    reads = []

    def stream(start: int, end: int):
        reads.append((start, end))
        return stream_of(data, piece)(start, end)

    plan = Plan()
    plan.add(b"header")
    plan.add(Span(0, len(tile), jpeg=True))
    plan.add(Span(len(tile), 2 * len(tile), jpeg=True))
    plan.add(Span(2 * len(tile), len(data)))
    out = b"".join([p async for p in plan.chunks(RangeSource(len(data), stream))])
    assert out == b"header" + data and plan.size == len(out)
    assert reads == [(0, len(data))]

    app1 = segment(0xE1, b"Exif\x00\x00" + crafted.ident("SECOND-TILE").encode())
    tampered = tile + tile[:2] + app1 + tile[2:]
    plan = Plan()
    plan.add(Span(0, len(tile), jpeg=True))
    plan.add(Span(len(tile), len(tampered), jpeg=True))
    emitted = b""
    with pytest.raises(MetadataInStream):
        async for p in plan.chunks(RangeSource(len(tampered), stream_of(tampered, piece))):
            emitted += p
    assert emitted.startswith(tile) and survivors(emitted) == []
