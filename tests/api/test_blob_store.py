"""The blob store as the API shows it: /v1/info and /readyz, ranged reads, and S3 outages.

The outage tests kill a SeaweedFS of their own (SIGKILL, a crash) in the middle of an upload and
start it again on the same ports and data: the client gets a clean 503 ``store_unavailable``
with Retry-After, nothing is recorded and no object becomes visible, and the same service
(never restarted) stores images again once the store is back.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import (
    Api, jpeg, make_config, open_vault, random_bytes, readyz_becomes, s3_settings, sample_metadata,
    upload_body, random_image,
)
from tests.infra.blobs import S3RawBlobs, s3_client
from vault.api.app import create_app
from vault.store.format import DEFAULT_CHUNK_EXP, HEADER_LEN, TAG_LEN

CHUNK = 1 << DEFAULT_CHUNK_EXP


async def test_info_names_the_storage_backend(api, store):
    info = await (await api.client.get("/v1/info")).json()
    assert info["storage_backend"] == store


async def test_readyz_reports_the_store_writable(api, store):
    response = await api.client.get("/readyz")
    body = await response.json()
    assert response.status == 200, body
    assert body["checks"]["store"] == "ok"


@pytest.mark.parametrize("store", ["s3"], indirect=True)
async def test_readyz_reports_a_missing_bucket_and_recovers_when_it_is_back(api, service, seaweed):
    bucket = service.config.s3_bucket
    seaweed.empty_bucket(bucket, delete=True)
    response = await readyz_becomes(api.client, 503)
    body = await response.json()
    assert response.status == 503
    assert body["checks"]["store"] == "blob store bucket does not exist"
    assert bucket not in str(body)  # readyz is unauthenticated: no store names in it
    seaweed.sync_client().create_bucket(Bucket=bucket)
    assert (await readyz_becomes(api.client, 200)).status == 200


@pytest.mark.parametrize("store", ["s3"], indirect=True)
async def test_range_request_fetches_only_the_chunks_it_needs(api, service):
    data = random_image(48 * CHUNK + 100, seed=9)  # about 3 MiB, a multipart upload of one part
    record = await api.upload(data)
    ranges: list[str] = []

    def observe(request, **_):
        value = request.headers.get("Range")
        ranges.append(value.decode() if isinstance(value, bytes) else value)

    service.backend._client.meta.events.register("before-send.s3.GetObject", observe)
    start = 20 * CHUNK + 5
    headers = {**await api.headers(), "Range": f"bytes={start}-{start + 9}"}
    response = await api.client.get(f"/v1/images/{record['id']}", headers=headers)
    assert response.status == 206
    assert await response.read() == data[start:start + 10]
    sealed = CHUNK + TAG_LEN
    chunk_20 = HEADER_LEN + 20 * sealed
    # The header, then chunk 20 alone: 64 KiB of a 3 MiB blob.
    assert ranges == [f"bytes=0-{HEADER_LEN - 1}", f"bytes={chunk_20}-{chunk_20 + sealed - 1}"]


async def test_store_killed_mid_upload_gives_503_stores_nothing_and_recovers_without_a_restart(
    aiohttp_client, private_seaweed, new_bucket, tmp_path
):
    bucket = new_bucket(private_seaweed)
    config = make_config(tmp_path / "data", **s3_settings(private_seaweed, bucket))
    vault = await open_vault(config)
    try:
        api = Api(await aiohttp_client(create_app(config, vault=vault)), vault, {})
        first_data = random_image(200_000, seed=1)
        first = await api.upload(first_data)

        async def body_that_outlives_the_store():
            yield random_image(20 << 20, seed=2)  # two parts go up: a multipart upload is under way
            private_seaweed.stop()
            for n in range(8):
                yield random_bytes(1 << 20, seed=3 + n)

        response = await api.client.post(
            "/v1/images", data=upload_body(body_that_outlives_the_store(), sample_metadata()), headers=await api.headers()
        )
        payload = await response.json()
        assert response.status == 503, payload
        assert payload["error"]["code"] == "store_unavailable"
        assert int(response.headers["Retry-After"]) > 0
        assert vault.count_records() == 1

        # While the store is down: a small upload (one PutObject at commit) fails the same way,
        # reads are 503 too (not an integrity error: the blob is not known to be bad), and
        # readiness says which part is failing.
        status, payload = await api.upload(jpeg(b"small"), expect=None)
        assert status == 503 and payload["error"]["code"] == "store_unavailable"
        response = await api.client.get(f"/v1/images/{first['id']}", headers=await api.headers())
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "store_unavailable"
        response = await readyz_becomes(api.client, 503)
        assert response.status == 503
        assert (await response.json())["checks"]["store"] != "ok"
        assert vault.count_records() == 1

        private_seaweed.start()  # same ports, same data directory
        async with s3_client(private_seaweed.endpoint, private_seaweed.access_key, private_seaweed.secret_key) as client:
            raw = S3RawBlobs(client, bucket)
            assert await raw.leftovers() in (
                [f"blobs/{first['id']}"],
                # The abort could not reach the dead store: the upload's parts linger, invisible,
                # until cleanup_temporary (at start-up and in gc) finds them stale.
                sorted([f"blobs/{first['id']}", *(f"upload:{key}" for key, _ in await raw.uploads())]),
            )
            assert [key for key, _ in await raw.uploads()] != [f"blobs/{first['id']}"]

        assert (await readyz_becomes(api.client, 200)).status == 200
        second_data = random_image(12 << 20, seed=20)
        second = await api.upload(second_data)
        for record, data in ((first, first_data), (second, second_data)):
            response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
            assert response.status == 200
            assert hashlib.sha256(await response.read()).hexdigest() == hashlib.sha256(data).hexdigest()
        assert vault.count_records() == 2
    finally:
        await vault.close()

    # A daemon (re)started while the store is down still starts (start-up recovery is best
    # effort), reports the store in /readyz, and serves once the store is back.
    private_seaweed.stop()
    vault = await open_vault(config.with_overrides(s3_create_bucket=False))
    try:
        api = Api(await aiohttp_client(create_app(config, vault=vault)), vault, api._tokens)  # tokens persist
        assert (await readyz_becomes(api.client, 503)).status == 503
        private_seaweed.start()
        assert (await readyz_becomes(api.client, 200)).status == 200
        response = await api.client.get(f"/v1/images/{second['id']}", headers=await api.headers())
        assert response.status == 200
    finally:
        await vault.close()
