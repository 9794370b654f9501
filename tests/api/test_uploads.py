"""Resumable uploads (tus 1.0.0) at /v1/uploads, on both blob stores, with a real tus client.

tuspy speaks blocking HTTP (requests), so it runs on a worker thread while the test server runs
on the event loop. Interrupted PATCHes are written on a raw socket and cut where a random
generator says.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import random
from typing import Any

import pytest
from tusclient import client as tus

from tests.conftest import INDEXES, STORES, PATIENT_IDS, files_under, make_config, random_bytes, sample_metadata
from tests.ingest.crafted import jpeg_with_identifiers
from vault.ids import decode_id

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(params=INDEXES)
def index_engine(request):
    """The record core runs on both index engines (postgres with the fs store only)."""
    return request.param


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return request.param


def jpeg(size: int, seed: int = 0) -> bytes:
    """A JPEG with location and identifying metadata (stripped at ingest), padded after its end."""
    head = jpeg_with_identifiers()
    return head + random_bytes(max(0, size - len(head)), seed)


def creation_headers(length: int, metadata: Any = None, content_type: str = "image/jpeg") -> dict[str, str]:
    document = metadata if isinstance(metadata, bytes) else json.dumps(metadata or sample_metadata()).encode()
    value = f"metadata {base64.b64encode(document).decode()},content_type {base64.b64encode(content_type.encode()).decode()}"
    return {**TUS, "Upload-Length": str(length), "Upload-Metadata": value}


async def create(api, length: int, *, role: str = "clinician", expect: int = 201, **kw: Any) -> str:
    response = await api.client.post("/v1/uploads", headers={**await api.headers(role), **creation_headers(length, **kw)})
    assert response.status == expect, await response.text()
    assert response.headers["Tus-Resumable"] == "1.0.0"
    return response.headers.get("Location", "")


async def patch(api, url: str, offset: int, data: bytes, *, headers: dict[str, str] | None = None, role: str = "clinician"):
    return await api.client.patch(url, data=data, headers={
        **await api.headers(role), **TUS, "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream", **(headers or {}),
    })


async def head(api, url: str, role: str = "clinician", tenant: str = "clinic-a"):
    return await api.client.head(url, headers={**await api.headers(role, tenant), **TUS})


def tus_upload(endpoint: str, token: str, data: bytes, *, chunk_size: int, url: str | None = None,
               stop_at: int | None = None, content_type: str = "image/jpeg", metadata: Any = None) -> str:
    """An off-the-shelf client, as an integrator would use it; returns the upload URL."""
    client = tus.TusClient(endpoint, headers={"Authorization": f"Bearer {token}"})
    uploader = client.uploader(
        file_stream=io.BytesIO(data), chunk_size=chunk_size, url=url,
        metadata={"metadata": json.dumps(metadata or sample_metadata()), "content_type": content_type},
    )
    uploader.upload(stop_at=stop_at)
    return uploader.url


async def run_tus(api, data: bytes, **kw: Any) -> str:
    """tuspy against the test server; the upload's path."""
    from urllib.parse import urlsplit

    url = await asyncio.to_thread(tus_upload, str(api.client.make_url("/v1/uploads")), await api.token(), data, **kw)
    return urlsplit(url).path


async def record_of(api, upload_url: str) -> dict[str, Any]:
    response = await head(api, upload_url)
    assert response.status == 200
    location = response.headers["Content-Location"]
    got = await api.client.get(location + "/metadata", headers=await api.headers())
    assert got.status == 200
    return await got.json()


async def image_bytes(api, record_id: str) -> bytes:
    response = await api.client.get(f"/v1/images/{record_id}", headers=await api.headers())
    assert response.status == 200
    return await response.read()


async def stored_bytes(service) -> list[bytes]:
    """Every object in the blob store, raw (filesystem or bucket alike)."""
    return [b"".join([piece async for piece in service.backend.read_all(blob_id)])
            async for blob_id in service.backend.list_ids()]


async def test_options_advertises_the_protocol_and_extensions(api):
    response = await api.client.options("/v1/uploads", headers=await api.headers())
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "expiration", "termination", "checksum"}
    assert "sha256" in response.headers["Tus-Checksum-Algorithm"].split(",")
    assert int(response.headers["Tus-Max-Size"]) == api.service.config.max_image_bytes


async def test_tuspy_upload_in_chunks_gives_the_record_a_post_of_the_same_bytes_gives(api):
    data = jpeg(700_000, seed=1)
    url = await run_tus(api, data, chunk_size=200_000)
    via_tus = await record_of(api, url)
    via_post = await api.upload(data)
    for field in ("sha256", "size", "content_type", "received_sha256", "patient_id", "body_site"):
        assert via_tus.get(field) == via_post.get(field), field
    assert via_tus["received_sha256"] == hashlib.sha256(data).hexdigest()  # stripped: stored bytes differ
    assert await image_bytes(api, via_tus["id"]) == await image_bytes(api, via_post["id"])
    # The staged segments are gone, and nothing but the two records' blobs is left in the store.
    assert len([b async for b in api.service.backend.list_ids()]) == 2
    entries = (await api.service.audit_entries(_admin(), limit=100)).entries
    actions = [e.event.action for e in entries]
    assert actions.count("upload_start") == 1 and actions.count("create") == 2
    assert any(e.to_json()["action"] == "create" and via_tus["id"] in e.to_json()["record_ids"] for e in entries)


def _admin():
    from vault.cli.common import COMMAND_LINE

    return COMMAND_LINE


async def test_a_single_chunk_and_creation_with_upload_both_complete(api):
    data = jpeg(50_000, seed=2)
    url = await run_tus(api, data, chunk_size=1 << 23)
    assert (await record_of(api, url))["received_sha256"] == hashlib.sha256(data).hexdigest()
    headers = {**await api.headers(), **creation_headers(len(data)), "Content-Type": "application/offset+octet-stream"}
    response = await api.client.post("/v1/uploads", data=data, headers=headers)
    assert response.status == 201, await response.text()
    assert response.headers["Upload-Offset"] == str(len(data))
    assert response.headers["Content-Location"].startswith("/v1/images/")


async def test_interrupted_patches_at_random_offsets_resume_with_a_new_client(api):
    rng = random.Random(7)
    data = jpeg(900_000, seed=3)
    url = await run_tus(api, data, chunk_size=100_000, stop_at=100_000)
    token = await api.token()
    offset = 100_000
    for _ in range(4):
        cut = rng.randrange(1, 150_000)
        await _cut_patch(api, url, token, offset, data[offset:offset + 200_000], cut)
        new_offset = await _settled_offset(api, url, offset)
        assert offset < new_offset <= offset + cut  # what arrived before the cut is kept
        offset = new_offset
    # A new client with the same URL asks for the offset and sends the rest.
    await asyncio.to_thread(tus_upload, str(api.client.make_url("/v1/uploads")), token, data, chunk_size=300_000,
                            url=str(api.client.make_url(url)))
    record = await record_of(api, url)
    assert record["received_sha256"] == hashlib.sha256(data).hexdigest()
    assert record["sha256"] == (await api.upload(data))["sha256"]


async def _settled_offset(api, url: str, before: int) -> int:
    """The offset once the server has noticed the cut (a HEAD may come before it has, and then
    honestly answers the offset before the interrupted PATCH)."""
    for _ in range(100):
        response = await head(api, url)
        assert response.status == 200
        offset = int(response.headers["Upload-Offset"])
        if offset != before:
            return offset
        await asyncio.sleep(0.05)
    return before


async def _cut_patch(api, url: str, token: str, offset: int, chunk: bytes, cut: int) -> None:
    """A PATCH announcing ``chunk`` whose connection drops after ``cut`` bytes of it."""
    host, port = api.client.server.host, api.client.server.port
    _, writer = await asyncio.open_connection(host, port)
    writer.write((f"PATCH {url} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                  f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
                  f"Content-Type: application/offset+octet-stream\r\nContent-Length: {len(chunk)}\r\n\r\n").encode()
                 + chunk[:cut])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    await writer.wait_closed()


async def test_offset_mismatch_is_409_and_checksum_mismatch_is_460(api):
    data = jpeg(300_000, seed=4)
    url = await create(api, len(data))
    first = await patch(api, url, 0, data[:100_000])
    assert first.status == 204 and first.headers["Upload-Offset"] == "100000"
    assert "Upload-Expires" in first.headers
    again = await patch(api, url, 0, data[:100_000])
    assert again.status == 409 and (await again.json())["error"]["code"] == "offset_mismatch"
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    bad = await patch(api, url, 100_000, data[100_000:200_000], headers={"Upload-Checksum": f"sha256 {wrong}"})
    assert bad.status == 460 and (await bad.json())["error"]["code"] == "checksum_mismatch"
    assert (await head(api, url)).headers["Upload-Offset"] == "100000"  # the chunk was discarded
    unknown = await patch(api, url, 100_000, data[100_000:200_000], headers={"Upload-Checksum": "md5 AAAA"})
    assert unknown.status == 400
    right = base64.b64encode(hashlib.sha256(data[100_000:]).digest()).decode()
    last = await patch(api, url, 100_000, data[100_000:], headers={"Upload-Checksum": f"sha256 {right}"})
    assert last.status == 204 and last.headers["Content-Location"].startswith("/v1/images/")
    # The completing answer lost: asking again gives it again, and no second record.
    replay = await patch(api, url, len(data), b"")
    assert replay.status == 204 and replay.headers["Content-Location"] == last.headers["Content-Location"]
    assert api.service.count_records() == 1
    wrong_last = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    small = jpeg(2_000, seed=5)  # of the declared type: the content check comes first on a final chunk
    url2 = await create(api, len(small))
    bad_last = await patch(api, url2, 0, small, headers={"Upload-Checksum": f"sha256 {wrong_last}"})
    assert bad_last.status == 460 and api.service.count_records() == 1


async def test_protocol_errors_get_the_error_json(api):
    data = jpeg(1000)
    url = await create(api, len(data))
    no_version = await api.client.head(url, headers=await api.headers())
    assert no_version.status == 412 and no_version.headers["Tus-Version"] == "1.0.0"
    wrong_type = await api.client.patch(url, data=data, headers={**await api.headers(), **TUS, "Upload-Offset": "0",
                                                                 "Content-Type": "image/jpeg"})
    assert wrong_type.status == 415 and (await wrong_type.json())["error"]["code"] == "unsupported_media_type"
    no_offset = await api.client.patch(url, data=data, headers={**await api.headers(), **TUS,
                                                                "Content-Type": "application/offset+octet-stream"})
    assert no_offset.status == 400
    too_long = await patch(api, url, 0, data + b"more")
    assert too_long.status == 400
    unknown = await head(api, "/v1/uploads/00000000000000000000000000")
    assert unknown.status == 404
    researcher = await api.client.post("/v1/uploads", headers={**await api.headers("researcher"), **creation_headers(10)})
    assert researcher.status == 403


async def test_bad_metadata_is_refused_at_creation_as_for_post(api):
    for metadata, status, code in (
        (b"not json", 400, "invalid_request"),
        (json.dumps(sample_metadata(captured_at="yesterday")).encode(), 400, "invalid_metadata"),
        (json.dumps({**sample_metadata(), "shoe_size": 9}).encode(), 400, "unknown_field"),
        (json.dumps(sample_metadata(patient_id=None)).encode(), 400, "invalid_metadata"),
    ):
        response = await api.client.post("/v1/uploads", headers={**await api.headers(), **creation_headers(10, metadata)})
        assert response.status == status, metadata
        assert (await response.json())["error"]["code"] == code
    wrong_type = await api.client.post("/v1/uploads", headers={**await api.headers(),
                                                               **creation_headers(10, content_type="text/plain")})
    assert wrong_type.status == 415
    held = await api.client.post("/v1/uploads", headers={**await api.headers(),
                                                         **creation_headers(10, sample_metadata(legal_hold=True))})
    assert held.status == 403  # a clinician may not set a legal hold, at creation as at POST
    assert not [k async for k in api.service.backend.list_ids()]


async def test_the_largest_valid_metadata_fits_the_tus_header_limit_and_other_routes_keep_theirs(api):
    # JSON may carry any amount of white space: the largest valid metadata is max_metadata_bytes.
    limit = api.service.config.max_metadata_bytes
    compact = json.dumps(sample_metadata()).encode()
    largest = compact[:-1] + b" " * (limit - len(compact)) + b"}"
    assert len(largest) == limit
    status, _ = await _create_raw(api, largest)
    assert status == 201
    status, body = await _create_raw(api, largest[:-1] + b" }")
    assert status == 413 and body["error"]["code"] == "too_large"
    huge = await api.client.get("/v1/info", headers={"X-Big": "a" * 17000})
    assert huge.status == 431 and (await huge.json())["error"]["code"] == "headers_too_large"


async def _create_raw(api, raw: bytes) -> tuple[int, Any]:
    response = await api.client.post("/v1/uploads", headers={**await api.headers(), **creation_headers(10, raw)})
    return response.status, await response.json() if response.status >= 400 else None


async def test_another_principal_gets_404_for_every_method(api):
    url = await create(api, 100)
    other_name = await api.service.create_token(_admin(), "clinic-a", _role("clinician"), "another-clinician", "never")
    other_tenant = {"Authorization": f"Bearer {await api.token('clinician', 'clinic-b')}"}
    for headers in ({"Authorization": f"Bearer {other_name[0]}"}, other_tenant):
        assert (await api.client.head(url, headers={**headers, **TUS})).status == 404
        response = await api.client.patch(url, data=b"x" * 10, headers={
            **headers, **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
        assert response.status == 404
        assert (await api.client.delete(url, headers={**headers, **TUS})).status == 404
    assert (await head(api, url)).status == 200


def _role(name: str):
    from vault.auth import Role

    return Role(name)


async def test_termination_deletes_the_state_and_the_staged_data(api):
    data = jpeg(200_000, seed=5)
    url = await create(api, len(data))
    assert (await patch(api, url, 0, data[:120_000])).status == 204
    assert len([k async for k in api.service.backend.list_ids()]) == 1
    response = await api.client.delete(url, headers={**await api.headers(), **TUS})
    assert response.status == 204
    assert (await head(api, url)).status == 404
    assert not [k async for k in api.service.backend.list_ids()]
    upload_id = decode_id(url.rsplit("/", 1)[1])
    assert api.service.index.read(lambda t: t.get_dek(upload_id)) is None
    actions = [e.event.action for e in (await api.service.audit_entries(_admin())).entries]
    assert "upload_terminate" in actions


async def test_expired_uploads_are_purged_with_their_staged_data_and_gc_keeps_live_ones(api, clock):
    from datetime import timedelta

    data = jpeg(200_000, seed=6)
    live = await create(api, len(data))
    assert (await patch(api, live, 0, data[:100_000])).status == 204
    # gc with no age limit keeps the live upload's staged segment.
    result = await api.service.collect_garbage(_admin(), min_age=timedelta(0))
    assert result.removed == 0
    assert (await head(api, live)).headers["Upload-Offset"] == "100000"
    clock.advance(seconds=api.service.config.upload_expiry + 1)
    assert (await head(api, live)).status == 404  # expired, even before the purge ran
    result = await api.service.collect_garbage(_admin(), min_age=timedelta(0))
    assert not [k async for k in api.service.backend.list_ids()]
    upload_id = decode_id(live.rsplit("/", 1)[1])
    assert api.service.index.read(lambda t: (t.get_upload(upload_id), t.get_dek(upload_id))) == (None, None)
    # and the tenant's open-upload count is free again
    assert api.service.index.read(lambda t: t.get_doc(b"meta", b"uploads:clinic-a")) == {"open": 0, "bytes": 0}


async def test_purge_keeps_a_completed_upload_until_it_expires(api, clock):
    data = jpeg(5_000)
    url = await run_tus(api, data, chunk_size=2_000)
    assert (await api.service.uploads.purge()) == 0
    assert (await head(api, url)).headers["Content-Location"]
    clock.advance(seconds=api.service.config.upload_expiry + 1)
    assert (await api.service.uploads.purge()) == 1
    assert api.service.count_records() == 1


async def test_no_plaintext_of_a_partial_upload_on_disk_or_in_the_bucket(api, config):
    marker = b"PLAINTEXT-OF-A-PARTIAL-UPLOAD-"
    data = jpeg_with_identifiers() + marker * 20_000
    url = await create(api, len(data), metadata=sample_metadata(patient_id=PATIENT_IDS[1]))
    for offset in range(0, 400_000, 100_000):
        assert (await patch(api, url, offset, data[offset:offset + 100_000])).status == 204
    api.service.index.write_sync(lambda t: None)  # a commit: everything on disk
    needles = [marker, PATIENT_IDS[1].encode(), b"suspected melanoma"]
    for path in files_under(config.data_dir):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue  # a transient file (the readiness probe's) removed while walking
        for needle in needles:
            assert needle not in raw, (path, needle)
    objects = await stored_bytes(api.service)
    assert len(objects) == 4
    # Needles long enough that ciphertext cannot hold them by chance (a 3-byte one would, in ~2 %
    # of runs): the marker, and the plaintext's EXIF head with its GPS block.
    exif_head = data[:64]
    for raw in objects:
        assert marker not in raw and exif_head not in raw


async def test_limits_on_open_uploads_and_their_bytes(tmp_path, aiohttp_client, clock):
    from tests.conftest import Api, open_vault
    from vault.api.app import create_app

    config = make_config(tmp_path / "data", max_open_uploads=2, max_open_upload_bytes=1000)
    service = await open_vault(config, clock)
    try:
        api = Api(await aiohttp_client(create_app(config, vault=service)), service, {})
        first = await create(api, 400)
        await create(api, 400)
        response = await api.client.post("/v1/uploads", headers={**await api.headers(), **creation_headers(100)})
        assert response.status == 503 and response.headers["Retry-After"]
        assert (await response.json())["error"]["code"] == "overloaded"
        assert (await api.client.delete(first, headers={**await api.headers(), **TUS})).status == 204
        over_bytes = await api.client.post("/v1/uploads", headers={**await api.headers(), **creation_headers(700)})
        assert over_bytes.status == 503
        too_large = await api.client.post("/v1/uploads", headers={**await api.headers(), **creation_headers(1001)})
        assert too_large.status == 413 and (await too_large.json())["error"]["code"] == "too_large"
        assert (await create(api, 500)).startswith("/v1/uploads/")
        # another tenant has limits of its own
        other = await api.client.post("/v1/uploads", headers={**await api.headers("clinician", "clinic-b"),
                                                              **creation_headers(900)})
        assert other.status == 201
    finally:
        await service.close()


async def test_segments_left_by_a_crash_after_completion_cannot_be_opened_and_gc_removes_them(api):
    from datetime import timedelta

    data = jpeg(300_000, seed=8)
    url = await create(api, len(data))
    assert (await patch(api, url, 0, data[:150_000])).status == 204
    service = api.service
    (segment_id,) = [k async for k in service.backend.list_ids()]
    sealed = b"".join([p async for p in service.backend.read_all(segment_id)])
    assert (await patch(api, url, 150_000, data[150_000:])).status == 204
    upload_id = decode_id(url.rsplit("/", 1)[1])
    state = service.index.read(lambda t: t.get_upload(upload_id))
    # One commit made the record, completed the upload, unlisted its segments and dropped its key.
    assert state.completed and state.segments == () and service.index.read(lambda t: t.get_dek(upload_id)) is None
    # As if the daemon had died before deleting the segment: put it back.
    writer = await service.backend.open_writer(segment_id)
    await writer.write(sealed)
    await writer.commit()
    result = await service.collect_garbage(_admin(), min_age=timedelta(0))
    assert result.removed == 1
    assert [k async for k in service.backend.list_ids()] == [(await record_of(api, url))["id"]]


async def test_a_tampered_upload_state_is_never_acted_on(api):
    from vault.errors import IndexTampered

    data = jpeg(200_000, seed=9)
    url = await create(api, len(data))
    assert (await patch(api, url, 0, data[:100_000])).status == 204
    upload_id = decode_id(url.rsplit("/", 1)[1])

    def forge(txn):
        raw = txn.get_bytes(b"uploads", upload_id)
        txn.put_bytes(b"uploads", upload_id, raw.replace(b'"offset":100000', b'"offset":0'))

    api.service.index.write_sync(forge)
    with pytest.raises(IndexTampered):
        api.service.index.read(lambda t: t.get_upload(upload_id))
    assert (await head(api, url)).status == 500
    assert (await patch(api, url, 0, data[:100_000])).status == 500
    assert await api.service.uploads.purge() == 0
    assert len([k async for k in api.service.backend.list_ids()]) == 1


@pytest.mark.parametrize("index_engine", ["lmdb"], indirect=True)  # backups snapshot LMDB
async def test_a_restore_drops_open_uploads_whose_staged_data_is_not_in_the_backup(api, tmp_path):
    from tests.conftest import ESCROW_PASSPHRASE, make_escrow
    from vault.service import Vault

    data = jpeg(200_000, seed=10)
    url = await create(api, len(data))
    assert (await patch(api, url, 0, data[:100_000])).status == 204
    await api.upload(data)
    escrow = await make_escrow(api.service)
    await api.service.backup(_admin(), tmp_path / "backup")
    target = make_config(tmp_path / "restored")
    report = await Vault.restore(_admin(), target, tmp_path / "backup", escrow=escrow, escrow_passphrase=ESCROW_PASSPHRASE)
    assert report.records == 1 and report.dropped_unopenable_keys == []
    restored = await Vault.open(target)
    try:
        upload_id = decode_id(url.rsplit("/", 1)[1])
        assert restored.index.read(lambda t: (list(t.iter_upload_ids()), t.get_dek(upload_id))) == ([], None)
    finally:
        await restored.close()
