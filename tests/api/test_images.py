"""The record core over HTTP: round trips, ranges, caching headers, metadata, shredding."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.conftest import (
    INDEXES,
    JPEG_HEAD,
    STORES,
    jpeg,
    random_image,
    sample_metadata,
    upload_body,
)
from tests.infra.blobs import open_raw_blobs
from vault.store.format import DEFAULT_CHUNK_EXP

CS = 1 << DEFAULT_CHUNK_EXP
# The smallest file of the declared type (image/jpeg: its head; an empty file is of no type), and
# the sizes around the chunk boundaries.
SIZES = [len(JPEG_HEAD), len(JPEG_HEAD) + 1, CS - 1, CS, CS + 1, 3 * CS + 17]


@pytest.fixture(params=INDEXES)
def index_engine(request):
    """The record core runs on both index engines (postgres with the fs store only)."""
    return request.param


@pytest.fixture(params=STORES)
def store(request):
    """Every test here runs on the filesystem and on S3 (SeaweedFS)."""
    return request.param


@pytest.mark.parametrize("size", SIZES)
async def test_upload_then_download_returns_identical_bytes(api, size):
    data = random_image(size, seed=size)
    record = await api.upload(data)
    assert record["size"] == size
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
    assert response.status == 200
    assert await response.read() == data
    assert response.headers["ETag"] == f'"{record["sha256"]}"'
    assert response.headers["Content-Digest"] == "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
    assert response.headers["Content-Type"] == "image/jpeg"
    assert response.headers["Content-Length"] == str(size)
    assert response.headers["Content-Disposition"] == f'attachment; filename="{record["display_name"]}.jpg"'


async def test_fifty_mebibyte_image_round_trips_streamed(api):
    data = random_image(50 * 1024 * 1024, seed=50)

    async def pieces():
        view = memoryview(data)
        for offset in range(0, len(data), 1 << 20):
            yield bytes(view[offset:offset + (1 << 20)])

    body = upload_body(pieces(), sample_metadata())
    response = await api.client.post("/v1/images", data=body, headers=await api.headers())
    record = await response.json()
    assert response.status == 201, record
    response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
    digest = hashlib.sha256()
    async for piece in response.content.iter_chunked(1 << 20):
        digest.update(piece)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_upload_response_describes_record_without_storing_client_fields(api):
    record = await api.upload(jpeg(b"abc"), sample_metadata(tags=["follow-up", "baseline"]))
    assert record["patient_id"] == "943 476 5919"
    assert record["tenant"] == "clinic-a"
    assert record["key_version"] == 1
    assert record["consent"]["care"] is True and record["consent"]["research"] is False
    assert record["retain_until"] == "2036-11-20T10:15:00Z"
    assert record["display_name"].startswith("IMG-") and record["display_name"].endswith("_left_upper_back_dermoscopic")
    assert "943 476 5919" not in record["display_name"] and "9434765919" not in record["display_name"]
    response = await api.client.get(f"/v1/images/{record['id']}/metadata", headers=await api.headers())
    assert response.status == 200
    assert await response.json() == record


@pytest.mark.parametrize(
    "range_header, start, end",
    [
        ("bytes=0-0", 0, 1),
        ("bytes=65535-65536", 65535, 65537),
        ("bytes=65530-131080", 65530, 131081),
        ("bytes=100-", 100, 200_000),
        ("bytes=-70000", 200_000 - 70000, 200_000),
        ("bytes=131072-199999", 131072, 200_000),
        ("bytes=199999-300000", 199999, 200_000),
        ("bytes=100-" + "9" * 5000, 100, 200_000),  # an end past any file, in thousands of digits
    ],
)
async def test_range_requests_return_exact_slices_across_chunk_boundaries(api, range_header, start, end):
    data = random_image(200_000, seed=7)
    record = await api.upload(data)
    headers = {**await api.headers(), "Range": range_header}
    response = await api.client.get(f"/v1/images/{record['id']}", headers=headers)
    assert response.status == 206
    assert await response.read() == data[start:end]
    assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/200000"
    assert "Content-Digest" not in response.headers
    assert response.headers["Repr-Digest"].startswith("sha-256=:")


@pytest.mark.parametrize("range_header", ["bytes=500-", "bytes=10-5", "bytes=abc", "items=0-1", "bytes=0-1,5-6", "bytes=-0",
                                          "bytes=" + "9" * 5000 + "-", "bytes=\u0661-\u0662"])
async def test_unsatisfiable_or_malformed_range_is_416(api, range_header):
    record = await api.upload(random_image(500))
    headers = {**await api.headers(), "Range": range_header}
    response = await api.client.get(f"/v1/images/{record['id']}", headers=headers)
    assert response.status == 416
    body = await response.json()
    assert body["error"]["code"] == "range_not_satisfiable"
    assert response.headers["Content-Range"] == "bytes */500"


async def test_if_none_match_with_current_etag_is_304(api):
    record = await api.upload(jpeg(b"pixels"))
    headers = {**await api.headers(), "If-None-Match": f'"{record["sha256"]}"'}
    response = await api.client.get(f"/v1/images/{record['id']}", headers=headers)
    assert response.status == 304
    assert await response.read() == b""
    headers["If-None-Match"] = '"0000"'
    response = await api.client.get(f"/v1/images/{record['id']}", headers=headers)
    assert response.status == 200


async def test_head_gives_headers_without_body(api):
    record = await api.upload(jpeg(b"x" * 1000))
    response = await api.client.head(f"/v1/images/{record['id']}", headers=await api.headers())
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(jpeg(b"x" * 1000)))
    assert response.headers["ETag"] == f'"{record["sha256"]}"'
    assert await response.read() == b""


async def test_patch_metadata_merges_and_updates_indexes(api):
    record = await api.upload(jpeg(b"img"), sample_metadata(lesion_id="L-1"))
    headers = {**await api.headers(), "Content-Type": "application/merge-patch+json"}
    response = await api.client.patch(
        f"/v1/images/{record['id']}/metadata",
        json={"lesion_id": "L-2", "description": None, "consent": {"teaching": True}},
        headers=headers,
    )
    updated = await response.json()
    assert response.status == 200, updated
    assert updated["lesion_id"] == "L-2"
    assert updated["description"] is None
    assert updated["consent"]["teaching"] is True and updated["consent"]["care"] is True
    assert updated["sha256"] == record["sha256"]
    found = await (await api.client.post("/v1/search", json={"lesion_id": "L-2"}, headers=await api.headers())).json()
    assert [r["id"] for r in found["items"]] == [record["id"]]
    stale = await (await api.client.post("/v1/search", json={"lesion_id": "L-1"}, headers=await api.headers())).json()
    assert stale["items"] == []


@pytest.mark.parametrize(
    "patch, status, code",
    [
        ({"sha256": "0" * 64}, 400, "invalid_metadata"),
        ({"id": "X"}, 400, "unknown_field"),
        ({"created_at": "2020-01-01T00:00:00Z"}, 400, "unknown_field"),
        ({"key_version": 9}, 400, "unknown_field"),
        ({"tenant": "clinic-b"}, 400, "unknown_field"),
        ({"captured_at": None}, 400, "invalid_metadata"),
        ({"modality": "xray"}, 400, "invalid_metadata"),
        ({"patient_id": "someone else"}, 403, "forbidden"),
        ([1, 2], 400, "invalid_request"),
    ],
)
async def test_patch_rejects_server_fields_and_bad_values(api, patch, status, code):
    record = await api.upload(jpeg(b"img"))
    response = await api.client.patch(f"/v1/images/{record['id']}/metadata", json=patch, headers=await api.headers())
    assert response.status == status
    assert (await response.json())["error"]["code"] == code


async def test_dpo_may_rectify_patient_id_and_search_follows(api):
    record = await api.upload(jpeg(b"img"))
    response = await api.client.patch(
        f"/v1/images/{record['id']}/metadata", json={"patient_id": "HOSP-0042-PT-JQ7"},
        headers=await api.headers("dpo"),
    )
    assert response.status == 200
    found = await (await api.client.post("/v1/search", json={"patient_id": "HOSP-0042-PT-JQ7"}, headers=await api.headers())).json()
    assert [r["id"] for r in found["items"]] == [record["id"]]
    old = await (await api.client.post("/v1/search", json={"patient_id": "943 476 5919"}, headers=await api.headers())).json()
    assert old["items"] == []


async def test_shredded_record_is_gone_everywhere(api, service):
    data = random_image(70000, seed=3)
    record = await api.upload(data, sample_metadata(retention={"class": "until", "until": "2020-01-01"}), role="dpo")
    rid = record["id"]
    from vault.ids import decode_id

    raw_id = decode_id(rid)
    wrapped = service.index.read(lambda t: t.get_dek(raw_id))
    async with open_raw_blobs(service.config) as raw:
        blob = await raw.read(rid)
    response = await api.client.delete(f"/v1/images/{rid}", headers=await api.headers())
    assert response.status == 200
    assert await response.json() == {"id": rid, "shredded": True}
    for path in (f"/v1/images/{rid}", f"/v1/images/{rid}/metadata"):
        response = await api.client.get(path, headers=await api.headers())
        assert response.status == 404
    assert service.index.read(lambda t: (t.get_record(raw_id), t.get_dek(raw_id))) == (None, None)
    async with open_raw_blobs(service.config) as raw:
        assert not await raw.exists(rid)
    found = await (await api.client.post("/v1/search", json={"patient_id": "943 476 5919"}, headers=await api.headers())).json()
    assert found["items"] == []
    # The blob copy cannot be decrypted: its DEK exists nowhere but in the wrapped form we
    # saved, and the service has no path that takes a wrapped key from outside.
    assert wrapped.startswith("local:v1:")
    assert data not in blob
    second = await api.client.delete(f"/v1/images/{rid}", headers=await api.headers())
    assert second.status == 404


async def test_delete_under_retention_obligation_is_409_unless_dpo_overrides(api):
    record = await api.upload(jpeg(b"img"))  # medical retention: ten years from capture
    response = await api.client.delete(f"/v1/images/{record['id']}", headers=await api.headers())
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "retention_obligation"
    response = await api.client.delete(f"/v1/images/{record['id']}?override=true", headers=await api.headers())
    assert response.status == 403
    response = await api.client.delete(f"/v1/images/{record['id']}?override=true", headers=await api.headers("dpo"))
    assert response.status == 409  # an override without a reason is no override
    response = await api.client.delete(
        f"/v1/images/{record['id']}?override=true&reason=erasure+request", headers=await api.headers("dpo")
    )
    assert response.status == 200


async def test_legal_hold_blocks_delete(api):
    record = await api.upload(
        jpeg(b"img"), sample_metadata(legal_hold=True, retention={"class": "until", "until": "2020-01-01"}), role="dpo",
    )
    response = await api.client.delete(f"/v1/images/{record['id']}?override=true&reason=x", headers=await api.headers("dpo"))
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "legal_hold"


async def test_concurrent_downloads_of_different_images_are_byte_identical(api):
    """Downloads reuse plaintext buffers (vault/store/sealer.py PlaintextBuffers): under many
    concurrent downloads of different images, no response carries another image's bytes."""
    import asyncio

    images = [random_image(3 * (1 << 20) + 1000 * seed, seed=seed) for seed in range(6)]
    records = [await api.upload(data) for data in images]
    headers = await api.headers()

    async def fetch(n: int) -> None:
        response = await api.client.get(f"/v1/images/{records[n % 6]['id']}", headers=headers)
        assert response.status == 200
        assert await response.read() == images[n % 6]

    await asyncio.gather(*(fetch(n) for n in range(36)))
    if api.service.config.store == "fs":
        assert api.service.download_buffers.reused > 0
