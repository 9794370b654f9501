"""Tampered blobs are never served: 500 integrity_error, no plaintext, counted in a metric.

On every backend the stored bytes themselves are changed behind imagevault's back: the file on
the filesystem, the object in the bucket on S3 (through a client of the test's own).
"""

from __future__ import annotations

import pytest

from tests.conftest import STORES, jpeg, random_image
from tests.infra.blobs import open_raw_blobs
from vault.store.format import DEFAULT_CHUNK_EXP, HEADER_LEN, TAG_LEN

CHUNK = 1 << DEFAULT_CHUNK_EXP
SEALED_CHUNK = CHUNK + TAG_LEN


@pytest.fixture(params=STORES)
def store(request):
    """Every test here runs on the filesystem and on S3 (SeaweedFS)."""
    return request.param


def flip_bit(blob: bytes) -> bytes:
    raw = bytearray(blob)
    raw[HEADER_LEN + 100] ^= 0x01
    return bytes(raw)


def truncate(blob: bytes) -> bytes:
    return blob[: HEADER_LEN + SEALED_CHUNK * 2]  # drops the final chunk exactly at a boundary


def truncate_mid_chunk(blob: bytes) -> bytes:
    return blob[:-1000]


def swap_chunks(blob: bytes) -> bytes:
    head, body = blob[:HEADER_LEN], blob[HEADER_LEN:]
    first, second, rest = body[:SEALED_CHUNK], body[SEALED_CHUNK:2 * SEALED_CHUNK], body[2 * SEALED_CHUNK:]
    return head + second + first + rest


def edit_header(blob: bytes) -> bytes:
    raw = bytearray(blob)
    raw[HEADER_LEN - 1] ^= 0xFF  # last byte of the nonce prefix
    return bytes(raw)


@pytest.mark.parametrize("mutate", [flip_bit, truncate, truncate_mid_chunk, swap_chunks, edit_header])
async def test_tampered_blob_gives_integrity_error_and_no_plaintext(api, service, mutate):
    data = random_image(3 * CHUNK + 500, seed=11)
    record = await api.upload(data)
    async with open_raw_blobs(service.config) as raw:
        await raw.write(record["id"], mutate(await raw.read(record["id"])))
    response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
    assert response.status == 500
    body = await response.read()
    assert b'"integrity_error"' in body
    assert data[:64] not in body and data[-64:] not in body
    metrics = (await (await api.client.get("/metrics")).read()).decode()
    assert "imagevault_integrity_errors_total 1.0" in metrics


async def test_blob_copied_over_another_records_blob_is_refused(api, service):
    first = await api.upload(random_image(100_000, seed=1))
    second = await api.upload(random_image(100_000, seed=2))
    async with open_raw_blobs(service.config) as raw:
        await raw.write(second["id"], await raw.read(first["id"]))
    for record in (second,):
        response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
        assert response.status == 500
        assert (await response.json())["error"]["code"] == "integrity_error"
    response = await api.client.get(f"/v1/images/{first['id']}", headers=await api.headers())
    assert response.status == 200


async def test_missing_blob_is_an_integrity_error_not_an_empty_image(api, service):
    record = await api.upload(jpeg(b"some pixels"))
    async with open_raw_blobs(service.config) as raw:
        await raw.delete(record["id"])
    response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
    assert response.status == 500
    assert (await response.json())["error"]["code"] == "integrity_error"


async def test_ranged_read_of_intact_chunks_still_works_but_tampered_chunk_is_refused(api, service):
    data = random_image(4 * CHUNK, seed=5)
    record = await api.upload(data)
    async with open_raw_blobs(service.config) as raw:
        blob = bytearray(await raw.read(record["id"]))
        blob[HEADER_LEN + 3 * SEALED_CHUNK + 10] ^= 0x80  # inside the last chunk
        await raw.write(record["id"], bytes(blob))
    headers = {**await api.headers(), "Range": f"bytes=0-{CHUNK - 1}"}
    response = await api.client.get(f"/v1/images/{record['id']}", headers=headers)
    # A range authenticates exactly the chunks it reads: those are intact and genuine.
    assert response.status == 206
    assert await response.read() == data[:CHUNK]
    headers["Range"] = f"bytes={3 * CHUNK}-{3 * CHUNK + 10}"
    response = await api.client.get(f"/v1/images/{record['id']}", headers=headers)
    assert response.status == 500
