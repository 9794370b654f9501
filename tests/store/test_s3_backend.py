"""The S3 blob backend against a real SeaweedFS (no mocked store).

What a test sees of the bucket it reads with a client of its own (``tests.infra.blobs``); the
requests the backend sends are observed with botocore's event hooks, never altered.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.infra.blobs import S3RawBlobs, s3_client
from tests.infra.seaweed import SeaweedFS, free_ports
from vault.errors import InsufficientStorage, NotFound, StoreUnavailable
from vault.ids import encode_id, new_record_id
from vault.store.backends import s3
from vault.store.backends.s3 import MIB, PART_SLACK, S3Backend, S3Settings

PART = 5 * MIB  # S3's minimum part size: the smallest blobs that exercise multipart uploads


def new_id(age: timedelta = timedelta(0)) -> str:
    return encode_id(new_record_id(time.time() - age.total_seconds()))


def settings_for(server: SeaweedFS, bucket: str, **changes: Any) -> S3Settings:
    values: dict[str, Any] = {
        "bucket": bucket, "endpoint": server.endpoint, "access_key": server.access_key,
        "secret_key": server.secret_key, "part_size": PART,
    }
    values.update(changes)
    return S3Settings(**values)


@pytest.fixture
def bucket(seaweed, new_bucket) -> str:
    return new_bucket(seaweed)


@pytest.fixture
async def backend(seaweed, bucket):
    opened = await S3Backend.open(settings_for(seaweed, bucket), create_bucket=True)
    yield opened
    await opened.close()


@pytest.fixture
async def raw(seaweed, bucket):
    async with s3_client(seaweed.endpoint, seaweed.access_key, seaweed.secret_key) as client:
        yield S3RawBlobs(client, bucket)


class RequestLog:
    """Operation names and Range headers of what a backend's client sends (observed only)."""

    def __init__(self, backend: S3Backend) -> None:
        self.sent: list[tuple[str, str | None]] = []
        backend._client.meta.events.register("before-send.s3", self._record)

    def _record(self, request: Any, event_name: str, **_: Any) -> None:
        # event_name is "before-send.s3.<Operation>"
        value = request.headers.get("Range")
        self.sent.append((event_name.rsplit(".", 1)[-1], value.decode() if isinstance(value, bytes) else value))

    def operations(self) -> list[str]:
        return [name for name, _ in self.sent]


async def put(backend: S3Backend, blob_id: str, data: bytes, piece: int = 100_003) -> None:
    writer = await backend.open_writer(blob_id)
    for start in range(0, len(data), piece):
        await writer.write(data[start:start + piece])
    await writer.commit()


def test_backend_is_named_s3_and_keys_are_blobs_slash_id():
    assert S3Backend.name == "s3"
    blob_id = new_id()
    assert S3Backend.key_of(blob_id) == f"blobs/{blob_id}"


@pytest.mark.parametrize("bad", ["../etc/passwd", "01jd0000000000000000000000", "81JD0000000000000000000000",
                                 "01JD000000000000000000000", "01JD0000000000000000000000/x", "", "blobs/x"])
async def test_malformed_ids_are_not_found_before_any_request(backend, bad):
    log = RequestLog(backend)
    for call in (backend.open_writer(bad), backend.read(bad, 0, 10), backend.size(bad), backend.delete(bad)):
        with pytest.raises(NotFound):
            await call
    assert log.sent == []


async def test_small_blob_is_one_put_object_visible_only_after_commit(backend, raw):
    blob_id = new_id()
    data = os.urandom(PART + PART_SLACK)  # the largest blob that still goes in one request
    log = RequestLog(backend)
    writer = await backend.open_writer(blob_id)
    for start in range(0, len(data), 65_552):
        await writer.write(data[start:start + 65_552])
    assert log.sent == []  # nothing leaves before commit
    assert not await raw.exists(blob_id)
    await writer.commit()
    assert log.operations() == ["PutObject"]
    assert await raw.read(blob_id) == data
    assert await backend.size(blob_id) == len(data)
    assert [i async for i in backend.list_ids()] == [blob_id]


async def test_large_blob_goes_up_in_parts_holding_at_most_one_part_and_is_invisible_until_complete(backend, raw):
    blob_id = new_id()
    data = os.urandom(3 * PART + 2 * PART_SLACK + 12345)
    log = RequestLog(backend)
    writer = await backend.open_writer(blob_id)
    piece = 300_007
    for start in range(0, len(data), piece):
        await writer.write(data[start:start + piece])
        assert writer._buffer.tell() <= PART + PART_SLACK  # never the whole image in memory
    assert log.operations() == ["CreateMultipartUpload", "UploadPart", "UploadPart", "UploadPart"]
    assert not await raw.exists(blob_id)  # parts are not an object
    assert [key for key, _ in await raw.uploads()] == [f"blobs/{blob_id}"]
    await writer.commit()
    assert log.operations()[4:] == ["UploadPart", "CompleteMultipartUpload"]
    assert await raw.uploads() == []
    assert await raw.read(blob_id) == data
    assert await backend.read(blob_id, PART - 10, 20) == data[PART - 10:PART + 10]  # across a part boundary


async def test_abort_discards_the_multipart_upload_and_is_idempotent(backend, raw):
    blob_id = new_id()
    writer = await backend.open_writer(blob_id)
    await writer.write(os.urandom(2 * PART + PART_SLACK + 1))
    assert len(await raw.uploads()) == 1
    await writer.abort()
    await writer.abort()
    assert await raw.uploads() == []
    assert not await raw.exists(blob_id)
    with pytest.raises(ValueError):
        await writer.write(b"more")
    with pytest.raises(ValueError):
        await writer.commit()


async def test_abort_after_commit_keeps_the_blob(backend, raw):
    blob_id = new_id()
    writer = await backend.open_writer(blob_id)
    await writer.write(b"sealed bytes")
    await writer.commit()
    await writer.abort()
    assert await raw.read(blob_id) == b"sealed bytes"


async def test_reads_are_ranged_gets_of_exactly_the_bytes_asked_for(backend):
    blob_id = new_id()
    data = os.urandom(300_000)
    await put(backend, blob_id, data)
    log = RequestLog(backend)
    assert await backend.read(blob_id, 0, 31) == data[:31]
    assert await backend.read(blob_id, 100_000, 65_552) == data[100_000:165_552]
    assert await backend.read(blob_id, 299_990, 100) == data[299_990:]  # fewer only at the end
    assert await backend.read(blob_id, 300_000, 10) == b""  # at the end: nothing, not an error
    assert await backend.read(blob_id, 400_000, 10) == b""
    assert await backend.read(blob_id, 5, 0) == b""
    gets = [rng for name, rng in log.sent if name == "GetObject"]
    assert gets == ["bytes=0-30", "bytes=100000-165551", "bytes=299990-300089", "bytes=300000-300009",
                    "bytes=400000-400009"]
    with pytest.raises(ValueError):
        await backend.read(blob_id, -1, 5)


async def test_empty_blob_round_trips(backend):
    blob_id = new_id()
    await put(backend, blob_id, b"")
    assert await backend.size(blob_id) == 0
    assert await backend.read(blob_id, 0, 31) == b""


async def test_missing_blob_is_not_found_and_delete_says_so(backend):
    blob_id = new_id()
    for call in (backend.read(blob_id, 0, 10), backend.read(blob_id, 0, 0), backend.size(blob_id)):
        with pytest.raises(NotFound):
            await call
    assert await backend.delete(blob_id) is False
    await put(backend, blob_id, b"x")
    assert await backend.delete(blob_id) is True
    assert await backend.delete(blob_id) is False


async def test_objects_carry_no_metadata_beyond_a_fixed_content_type(backend, raw):
    small, large = new_id(), new_id()
    await put(backend, small, b"ciphertext")
    await put(backend, large, os.urandom(PART + PART_SLACK + 1))
    for blob_id in (small, large):
        head = await raw.client.head_object(Bucket=raw.bucket, Key=f"blobs/{blob_id}")
        assert head["Metadata"] == {}
        assert head["ContentType"] == "application/octet-stream"
        tags = await raw.client.get_object_tagging(Bucket=raw.bucket, Key=f"blobs/{blob_id}")
        assert tags["TagSet"] == []


async def test_list_ids_pages_through_everything_and_skips_foreign_keys(seaweed, bucket, raw):
    backend = await S3Backend.open(settings_for(seaweed, bucket, list_page_size=7), create_bucket=True)
    try:
        ids = sorted(new_id() for _ in range(23))
        await asyncio.gather(*(raw.write(blob_id, b"b") for blob_id in ids))
        for foreign in ("blobs/readme.txt", "blobs/" + ids[0].lower(), "other/" + new_id(), "blobs/" + ids[1] + ".tmp"):
            await raw.client.put_object(Bucket=bucket, Key=foreign, Body=b"f")
        log = RequestLog(backend)
        assert [i async for i in backend.list_ids()] == ids
        assert log.operations().count("ListObjectsV2") == 4  # 26 keys under blobs/, 7 per page
    finally:
        await backend.close()


async def test_check_writable_writes_and_removes_a_probe(backend, raw):
    log = RequestLog(backend)
    await backend.check_writable()
    assert log.operations() == ["PutObject", "DeleteObject"]
    assert await raw.everything() == []


async def test_missing_bucket_is_reported_as_such_and_created_only_when_asked(seaweed, new_bucket):
    name = new_bucket(seaweed, fresh=True)
    backend = await S3Backend.open(settings_for(seaweed, name))
    try:
        with pytest.raises(StoreUnavailable, match="bucket does not exist"):
            await backend.check_writable()
    finally:
        await backend.close()
    created = await S3Backend.open(settings_for(seaweed, name), create_bucket=True)
    again = await S3Backend.open(settings_for(seaweed, name), create_bucket=True)  # idempotent
    try:
        await created.check_writable()
    finally:
        await created.close()
        await again.close()


async def test_wrong_secret_is_refused_as_a_store_problem(seaweed, bucket, backend):
    wrong = await S3Backend.open(settings_for(seaweed, bucket, secret_key="not-the-secret"))
    try:
        with pytest.raises(StoreUnavailable, match="refused the configured credentials"):
            await wrong.check_writable()
        with pytest.raises(StoreUnavailable):
            await wrong.read(new_id(), 0, 10)
    finally:
        await wrong.close()


async def test_cleanup_aborts_stale_uploads_of_others_but_keeps_own_and_recent_ones(seaweed, bucket, raw):
    # A crashed writer's upload, as another process left it:
    crashed = await raw.client.create_multipart_upload(Bucket=bucket, Key=f"blobs/{new_id()}")
    patient = await S3Backend.open(settings_for(seaweed, bucket), create_bucket=True)  # default: 1 hour
    eager = await S3Backend.open(settings_for(seaweed, bucket, stale_upload_age=timedelta(0)))
    try:
        assert await patient.cleanup_temporary() == 0  # a minute-old upload may still be running
        own = await eager.open_writer(new_id())
        await own.write(os.urandom(PART + PART_SLACK + 1))  # starts the upload
        await raw.client.put_object(Bucket=bucket, Key="probes/leftover", Body=b"\0")
        assert await eager.cleanup_temporary() == 2  # the crashed upload and the probe
        remaining = await raw.uploads()
        assert [upload_id for _, upload_id in remaining] != [crashed["UploadId"]]
        assert len(remaining) == 1  # the open writer's own
        await own.commit()
        assert await raw.uploads() == []
    finally:
        await patient.close()
        await eager.close()


async def test_an_image_beyond_ten_thousand_parts_is_insufficient_storage(backend, monkeypatch):
    monkeypatch.setattr(s3, "MAX_PARTS", 2)
    writer = await backend.open_writer(new_id())
    with pytest.raises(InsufficientStorage):
        for _ in range(4):
            await writer.write(os.urandom(PART))
    await writer.abort()


def test_part_size_grows_with_the_image_limit_to_stay_within_ten_thousand_parts():
    assert s3.part_size_for(2 * 1024**3) == 8 * MIB
    big = 200 * 1024**3
    assert s3.part_size_for(big) * 9_000 >= big


async def test_unreachable_endpoint_is_store_unavailable_within_seconds():
    (port,) = free_ports(1)  # nothing listens there
    unreachable = S3Settings(bucket="imagevault", endpoint=f"http://127.0.0.1:{port}", access_key="a", secret_key="b")
    # With the default retry budget: refused at once, retried once after a jittered backoff of
    # at most 2 s, then 503. No hang.
    backend = await S3Backend.open(unreachable)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await backend.size(new_id())
        assert time.monotonic() - started < 5
    finally:
        await backend.close()
    # Every operation maps the failure (one attempt each, to keep the test short).
    backend = await S3Backend.open(replace(unreachable, max_attempts=1))
    try:
        async def listing() -> list[str]:
            return [i async for i in backend.list_ids()]

        writer = await backend.open_writer(new_id())
        await writer.write(b"x")
        for call in (backend.check_writable(), backend.read(new_id(), 0, 10), backend.size(new_id()),
                     backend.delete(new_id()), backend.cleanup_temporary(), listing(), writer.commit()):
            with pytest.raises(StoreUnavailable) as caught:
                await call
            assert caught.value.retry_after > 0
    finally:
        await backend.close()


async def test_paused_store_fails_within_the_timeouts_then_recovers(private_seaweed, new_bucket):
    bucket = new_bucket(private_seaweed)
    backend = await S3Backend.open(
        settings_for(private_seaweed, bucket, connect_timeout=1, read_timeout=1, max_attempts=2), create_bucket=True
    )
    try:
        blob_id = new_id()
        await put(backend, blob_id, b"before")
        private_seaweed.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await backend.read(blob_id, 0, 6)
            # Two attempts of a one-second read timeout, plus a backoff of at most 0.1 s: no hang.
            assert time.monotonic() - started < 6
        finally:
            private_seaweed.resume()
        # The same backend object works again once the server catches up (on a loaded machine
        # its first answers after SIGCONT may themselves exceed the one-second read timeout).
        deadline = time.monotonic() + 20
        while True:
            try:
                assert await backend.read(blob_id, 0, 6) == b"before"
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await backend.close()


@pytest.mark.parametrize(
    "code, status, error",
    [
        ("NoSuchKey", 404, NotFound),
        ("404", 404, NotFound),
        ("NoSuchBucket", 404, StoreUnavailable),
        ("SlowDown", 503, StoreUnavailable),
        ("InternalError", 500, StoreUnavailable),
        ("ServiceUnavailable", 503, StoreUnavailable),
        ("EntityTooLarge", 400, InsufficientStorage),
        ("QuotaExceeded", 403, InsufficientStorage),
        ("", 507, InsufficientStorage),
        ("AccessDenied", 403, StoreUnavailable),
        ("SomethingNew", 400, StoreUnavailable),
    ],
)
def test_error_codes_map_to_imagevault_errors(code, status, error):
    exc = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")
    mapped = s3._translate_client_error(exc)
    assert type(mapped) is error
