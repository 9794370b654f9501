"""Researchers download de-identified copies: crafted JPEG, PNG, WebP, TIFF and DICOM files
carrying identifiers in every place their format allows are uploaded through the HTTP API by a
clinician and downloaded by a researcher; no identifier survives (raw bytes in UTF-8, UTF-16 and
UTF-32, and the format's own parser), the pixels are the same, and the clinician still gets the
stored file byte for byte. Formats that cannot be de-identified are refused."""

from __future__ import annotations

import hashlib
import io
import struct

import aiohttp
import piexif
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames

from tests.conftest import Api, make_config, open_vault, sample_metadata
from tests.ingest import crafted
from tests.ingest.crafted import pixels, survivors
from vault.api.app import create_app
from vault.ingest.deid.png import KEPT_CHUNKS as PNG_KEPT
from vault.ingest.deid.tiff import KEPT_TAGS as TIFF_KEPT

# The crafted JPEG has an MPF segment whose second image is gone from the copy: Pillow says so.
pytestmark = pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file")
RESEARCH = sample_metadata(consent={"research": True})
CASES = {
    "jpeg": ("image/jpeg", crafted.jpeg_with_identifiers),
    "png": ("image/png", crafted.png_with_identifiers),
    "webp": ("image/webp", crafted.webp_with_identifiers),
    "webp-animated": ("image/webp", lambda: crafted.webp_with_identifiers(animated=True)),
    "tiff": ("image/tiff", crafted.tiff_with_identifiers),
    "tiff-lzw": ("image/tiff", lambda: crafted.tiff_with_identifiers("tiff_lzw")),
    "tiff-jpeg": ("image/tiff", lambda: crafted.tiff_with_identifiers("jpeg")),
    "bigtiff": ("image/tiff", lambda: crafted.tiff_with_identifiers(big=True)),
    "dicom": ("application/dicom", crafted.dicom_with_identifiers),
    "dicom-jpeg": ("application/dicom", lambda: crafted.dicom_with_identifiers(encapsulated=True)),
}


@pytest.fixture
async def api(aiohttp_client, tmp_path):
    """Stripping off at ingest, so what the clinic sent is what is stored: the researcher's
    copy is then the only place where identifiers are removed."""
    config = make_config(tmp_path / "data", strip_metadata="none")
    service = await open_vault(config)
    client = await aiohttp_client(create_app(config, vault=service))
    yield Api(client, service, {})
    await service.close()


async def download(api, record_id, role, headers=None):
    response = await api.client.get(f"/v1/images/{record_id}", headers={**await api.headers(role), **(headers or {})})
    return response, await response.read()


def tiff_pages(data: bytes) -> list[tuple[dict[int, object], tuple[tuple[int, int], bytes]]]:
    out = []
    with Image.open(io.BytesIO(data)) as img:
        for page in range(img.n_frames):
            img.seek(page)
            img.load()
            out.append((dict(img.tag_v2), (img.size, img.convert("RGB").tobytes())))
    return out


def check_jpeg(copy: bytes, original: bytes) -> None:
    exif = piexif.load(copy)
    assert all(not exif[ifd] for ifd in ("0th", "Exif", "GPS", "1st", "Interop")) and exif["thumbnail"] is None
    with Image.open(io.BytesIO(copy)) as img:
        markers = {marker for marker, _ in img.applist}
        assert markers <= {"APP0", "APP2", "APP14"}, markers
        assert "comment" not in img.info and "exif" not in img.info and "xmp" not in img.info
    assert copy.endswith(b"\xff\xd9") and copy.count(b"\xff\xd8") == 1
    assert pixels(copy) == pixels(original)


def check_png(copy: bytes, original: bytes) -> None:
    kinds, pos = [], 8
    while pos < len(copy):
        length = struct.unpack(">I", copy[pos:pos + 4])[0]
        kinds.append(copy[pos + 4:pos + 8])
        pos += 12 + length
    assert set(kinds) <= PNG_KEPT | {b"iCCP"} and kinds[-1] == b"IEND"
    with Image.open(io.BytesIO(copy)) as img:
        img.load()
        assert not {"Author", "Comment", "Description", "Title", "XML:com.adobe.xmp", "exif"} & set(img.info)
        assert dict(img.getexif()) == {}
        assert img.info.get("icc_profile")  # colour management stays
    assert pixels(copy) == pixels(original)


def check_webp(copy: bytes, original: bytes) -> None:
    assert struct.unpack("<I", copy[4:8])[0] == len(copy) - 8
    with Image.open(io.BytesIO(copy)) as img:
        img.load()
        assert dict(img.getexif()) == {} and "xmp" not in img.info and "exif" not in img.info
        frames = getattr(img, "n_frames", 1)
    with Image.open(io.BytesIO(original)) as orig:
        assert frames == getattr(orig, "n_frames", 1)
    for frame in range(frames):
        with Image.open(io.BytesIO(copy)) as a, Image.open(io.BytesIO(original)) as b:
            a.seek(frame)
            b.seek(frame)
            assert a.convert("RGBA").tobytes() == b.convert("RGBA").tobytes()


def check_tiff(copy: bytes, original: bytes) -> None:
    copied, stored = tiff_pages(copy), tiff_pages(original)
    assert len(copied) == len(stored) == 2
    for (tags, image), (_, stored_image) in zip(copied, stored):
        assert set(tags) <= TIFF_KEPT, set(tags) - TIFF_KEPT
        assert image == stored_image
    with Image.open(io.BytesIO(copy)) as img:
        exif = img.getexif()
        assert not exif.get_ifd(0x8769) and not exif.get_ifd(0x8825)


def check_dicom(copy: bytes, original: bytes) -> None:
    ds, before = pydicom.dcmread(io.BytesIO(copy)), pydicom.dcmread(io.BytesIO(original))
    assert copy[:128] == bytes(128)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        assert keyword in ds and not ds.data_element(keyword).value, keyword
    for keyword in ("OtherPatientIDs", "OtherPatientIDsSequence", "PatientAddress", "InstitutionAddress",
                    "InstitutionalDepartmentName", "StudyDescription", "SeriesDescription", "ImageComments"):
        assert keyword not in ds, keyword
    assert not [e for e in ds.iterall() if e.tag.is_private]
    assert not [e for e in ds if 0x6000 <= e.tag.group <= 0x60FF]
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert ds.data_element(keyword).value != before.data_element(keyword).value, keyword
    # One original UID, one replacement, wherever it appears.
    assert ds.SOPInstanceUID == ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.SOPClassUID == before.SOPClassUID
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
        (stored_frame,) = generate_frames(before.PixelData, number_of_frames=1)
        assert piexif.load(frame)["0th"] == {} and pixels(frame) == pixels(stored_frame)
    else:
        assert ds.PixelData == before.PixelData


CHECKS = {"image/jpeg": check_jpeg, "image/png": check_png, "image/webp": check_webp,
          "image/tiff": check_tiff, "application/dicom": check_dicom}


@pytest.mark.parametrize("case", list(CASES))
async def test_research_download_carries_no_identifier_and_the_same_pixels(api, case):
    content_type, make = CASES[case]
    original = make()
    planted = survivors(original)
    assert len(planted) >= 10, planted  # the crafted file does carry identifiers
    record = await api.upload(original, RESEARCH, content_type=content_type)

    response, copy = await download(api, record["id"], "researcher")
    assert response.status == 200, copy
    assert survivors(copy) == []
    CHECKS[content_type](copy, original)
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Accept-Ranges"] == "none"
    stored_digest = hashlib.sha256(original).hexdigest()
    assert stored_digest not in response.headers.get("ETag", "")
    for name in ("Repr-Digest", "Content-Digest"):
        assert response.headers.get(name) in (None, "sha-256=:" + _b64(hashlib.sha256(copy).digest()) + ":")

    response, stored = await download(api, record["id"], "clinician")
    assert response.status == 200 and stored == original  # the clinical copy is untouched


def _b64(digest: bytes) -> str:
    import base64

    return base64.b64encode(digest).decode()


async def test_a_copy_made_while_streaming_has_no_length_etag_or_digest_up_front(api):
    record = await api.upload(crafted.jpeg_with_identifiers(), RESEARCH)
    response, copy = await download(api, record["id"], "researcher")
    assert response.status == 200 and copy
    assert response.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in response.headers
    for name in ("ETag", "Repr-Digest", "Content-Digest"):
        assert name not in response.headers


async def test_a_rebuilt_tiff_or_webp_has_its_length_and_no_etag(api):
    for content_type, data in (("image/tiff", crafted.tiff_with_identifiers()), ("image/webp", crafted.webp_with_identifiers())):
        record = await api.upload(data, RESEARCH, content_type=content_type)
        response, copy = await download(api, record["id"], "researcher")
        assert int(response.headers["Content-Length"]) == len(copy)
        assert "ETag" not in response.headers and "Repr-Digest" not in response.headers


async def test_a_dicom_copy_has_an_etag_of_its_own_bytes_and_honours_if_none_match(api):
    record = await api.upload(crafted.dicom_with_identifiers(), RESEARCH, content_type="application/dicom")
    response, copy = await download(api, record["id"], "researcher")
    etag = f'"{hashlib.sha256(copy).hexdigest()}"'
    assert response.headers["ETag"] == etag and int(response.headers["Content-Length"]) == len(copy)
    again, second = await download(api, record["id"], "researcher")
    assert second == copy  # the same stored file always gives the same copy (UIDs included)
    cached, body = await download(api, record["id"], "researcher", {"If-None-Match": etag})
    assert cached.status == 304 and body == b""
    stale, _ = await download(api, record["id"], "researcher", {"If-None-Match": f'"{record["sha256"]}"'})
    assert stale.status == 200


async def test_a_researcher_range_request_gets_the_whole_copy(api):
    record = await api.upload(crafted.png_with_identifiers(), RESEARCH, content_type="image/png")
    _, whole = await download(api, record["id"], "researcher")
    response, body = await download(api, record["id"], "researcher", {"Range": "bytes=0-9"})
    assert response.status == 200 and body == whole and "Content-Range" not in response.headers
    response, _ = await download(api, record["id"], "researcher", {"Range": "bytes=99999999-"})
    assert response.status == 200  # not even a 416: the range is not looked at
    response, body = await download(api, record["id"], "clinician", {"Range": "bytes=0-9"})
    assert response.status == 206 and len(body) == 10


async def test_head_for_a_researcher_gives_the_headers_of_the_copy(api):
    record = await api.upload(crafted.tiff_with_identifiers(), RESEARCH, content_type="image/tiff")
    _, copy = await download(api, record["id"], "researcher")
    head = await api.client.head(f"/v1/images/{record['id']}", headers=await api.headers("researcher"))
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(copy)
    assert await head.read() == b""


async def test_researchers_never_see_digests_or_size_of_the_identified_file(api):
    original = crafted.jpeg_with_identifiers()
    gps_api_record = await api.upload(original, RESEARCH)
    path = f"/v1/images/{gps_api_record['id']}/metadata"
    clinician = await (await api.client.get(path, headers=await api.headers())).json()
    assert clinician["sha256"] == hashlib.sha256(original).hexdigest() and clinician["size"] == len(original)
    researcher = await (await api.client.get(path, headers=await api.headers("researcher"))).json()
    assert not {"sha256", "received_sha256", "size"} & set(researcher)
    page = await (await api.client.post("/v1/search", json={}, headers=await api.headers("researcher"))).json()
    assert page["items"] and all(not {"sha256", "received_sha256", "size"} & set(item) for item in page["items"])
    assert hashlib.sha256(original).hexdigest() not in str(page) + str(researcher)


async def test_received_digest_is_hidden_from_researchers_under_gps_stripping(aiohttp_client, tmp_path):
    config = make_config(tmp_path / "data")  # default policy: GPS stripped, so the digests differ
    service = await open_vault(config)
    try:
        api = Api(await aiohttp_client(create_app(config, vault=service)), service, {})
        original = crafted.jpeg_with_identifiers()
        record = await api.upload(original, {**RESEARCH, "sha256": hashlib.sha256(original).hexdigest()})
        assert record["received_sha256"] == hashlib.sha256(original).hexdigest() != record["sha256"]
        path = f"/v1/images/{record['id']}/metadata"
        researcher = await (await api.client.get(path, headers=await api.headers("researcher"))).json()
        assert not {"sha256", "received_sha256", "size"} & set(researcher)
        response, copy = await download(api, record["id"], "researcher")
        assert response.status == 200 and survivors(copy) == []
    finally:
        await service.close()


@pytest.mark.parametrize("content_type", ["image/heic", "model/obj", "model/ply"])
async def test_formats_that_cannot_be_deidentified_are_refused_to_researchers(api, content_type):
    data = {  # each of its type (uploads are checked against it), each naming someone
        "image/heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + crafted.ident("HEIC-BOX").encode(),
        "model/obj": b"# " + crafted.ident("OBJ-COMMENT").encode() + b"\nv 0 0 0\n",
        "model/ply": b"ply\nformat ascii 1.0\ncomment " + crafted.ident("PLY-COMMENT").encode() + b"\nend_header\n",
    }[content_type]
    record = await api.upload(data, RESEARCH, content_type=content_type)
    for method in ("GET", "HEAD"):
        response = await api.client.request(method, f"/v1/images/{record['id']}", headers=await api.headers("researcher"))
        body = await response.read()
        assert response.status == 403, method
        assert crafted.MARK.encode() not in body
        if method == "GET":
            assert (await response.json())["error"]["code"] == "not_deidentifiable"
    response, stored = await download(api, record["id"], "clinician")
    assert response.status == 200 and stored == data
    entries = (await (await api.client.get("/v1/audit?limit=1000", headers=await api.headers("auditor"))).json())["entries"]
    refused = [e for e in entries if e["action"] == "read" and e["outcome"] == "not_deidentifiable"]
    assert len(refused) == 2 and refused[0]["record_ids"] == [record["id"]]
    assert refused[0]["actor"]["role"] == "researcher"


@pytest.mark.parametrize("data", [b"\xff\xd8\xff not a jpeg after its first bytes", b"\xff\xd8\xff\xfe\x00\x06QX9\xff\xda\x00\x02scan without end"])
async def test_a_stored_file_that_does_not_parse_is_refused_with_a_clean_error(api, data):
    record = await api.upload(data, RESEARCH)
    response, body = await download(api, record["id"], "researcher")
    assert response.status == 403 and b"QX9" not in body
    assert (await response.json())["error"]["code"] == "not_deidentifiable"


async def test_a_copy_that_fails_after_the_first_mib_aborts_the_connection(api):
    # A JPEG whose scan runs for 2 MiB and then stops without EOI: the failure is found only
    # after the first MiB of the copy has been sent, so the response must be cut short.
    head = b"\xff\xd8" + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    record = await api.upload(head + b"\x11" * (2 << 20), RESEARCH)
    response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers("researcher"))
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_a_large_tiff_is_copied_from_many_blob_chunks(api):
    big = crafted.picture(900, 700)
    out = io.BytesIO()
    big.save(out, "TIFF", tiffinfo={270: crafted.ident("BIG-TIFF-DESCRIPTION")}, save_all=True,
             append_images=[crafted.picture(64, 64)])
    original = out.getvalue()
    assert len(original) > 1 << 20
    record = await api.upload(original, RESEARCH, content_type="image/tiff")
    response, copy = await download(api, record["id"], "researcher")
    assert response.status == 200 and survivors(copy) == []
    assert [image for _, image in tiff_pages(copy)] == [image for _, image in tiff_pages(original)]
