"""The S3-compatible blob backend: one object per sealed blob, for stores larger than one disk.

Layout (``docs/format.md``, "S3 layout of blobs")::

    <bucket>/blobs/<ID>          committed blob: exactly the bytes of the blob format
    <bucket>/probes/<32 hex>     readiness probe (1 byte), deleted right after it was written

Objects carry no user metadata, no tags and a fixed content type: keys name only record ids,
bodies are ciphertext, so nothing in the bucket identifies a patient. Keys stay in the KMS and
the index in LMDB; the bucket can be replicated and backed up like any blob copy.

Writes. A ``S3Writer`` buffers what it is given. While more than ``part_size + PART_SLACK``
bytes are buffered it sends the first ``part_size`` bytes as the next part of a multipart
upload (started with the first part), so an upload holds at most about one part in memory
whatever the image size. A blob that never outgrows the buffer goes as one PutObject at
commit. The slack keeps the final part at least PART_SLACK bytes long and lets a blob of
exactly one part plus its chunk tags (an 8 MiB image) go in one request instead of three.
``commit()`` is the PutObject / CompleteMultipartUpload: only when it returns is the object
visible under its key. ``abort()`` sends AbortMultipartUpload; if the final request of a commit
was sent, it also deletes the key, since a commit whose answer was lost may still have made the
object visible. A crash leaves an incomplete multipart upload (invisible, but holding its parts),
which ``cleanup_temporary`` aborts once it is older than ``stale_upload_age``.

Reads. ``read`` is one ranged GET (``Range: bytes=a-b``), so a Range request on an image fetches
only the chunks it touches; a whole download asks for ``READ_BATCH_BYTES`` (4 MiB) per GET, so
the round trip per request stops mattering. ``size`` is a HEAD.

Errors are translated here and nowhere else (``_boundary``): an unreachable endpoint, a reset
connection, a timeout, a 5xx or SlowDown -> ``StoreUnavailable`` (503 + Retry-After); NoSuchKey /
404 -> ``NotFound``; EntityTooLarge, quota exceeded, 507 -> ``InsufficientStorage``; a missing
bucket or refused credentials -> ``StoreUnavailable`` with a message that says so (an operator's
problem, shown by ``/readyz``). The client has explicit connect/read timeouts and a small
retry budget, so a dead store fails a request within seconds instead of hanging it.

This is the only module that imports aiobotocore/botocore. The client is async (aiohttp
underneath): no thread per request.
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from vault.errors import ImageVaultError, InsufficientStorage, NotFound, StoreUnavailable
from vault.store.backends.base import BLOB_ID_RE, BlobBackend, BlobWriter, check_blob_id

log = logging.getLogger(__name__)

BLOB_PREFIX = "blobs/"
PROBE_PREFIX = "probes/"
CONTENT_TYPE = "application/octet-stream"
MIB = 1 << 20
DEFAULT_PART_SIZE = 8 * MIB
PART_SLACK = 1 * MIB
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's limit on parts per multipart upload
# Bytes per ranged GET while streaming a download: large enough that the round trip per
# request stops mattering, small enough that a download holds little (see docs/format.md).
READ_BATCH_BYTES = 4 * MIB

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_FULL_CODES = frozenset({"EntityTooLarge", "QuotaExceeded", "InsufficientStorage", "XMinioStorageFull",
                         "StorageFull", "XAmzQuotaExceeded"})
_DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                           "InvalidToken", "403"})
_THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                             "TooManyRequests", "503"})

_session: AioSession | None = None


def _shared_session() -> AioSession:
    # One session per process: it caches the parsed S3 service model (about 0.1 s to load), so
    # opening a backend per test or per CLI command does not pay for it again.
    global _session
    if _session is None:
        _session = get_session()
    return _session


def part_size_for(max_blob_bytes: int) -> int:
    """The part size that fits a blob of ``max_blob_bytes`` into S3's 10,000 parts (at least 8 MiB)."""
    # 9,000 rather than 10,000: the sealed blob is slightly larger than the image (31-byte
    # header, 16-byte tag per 64 KiB chunk), and the margin covers any chunk size.
    return max(DEFAULT_PART_SIZE, -(-max_blob_bytes // 9_000))


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach the bucket. ``access_key=None`` uses botocore's credential chain
    (environment, instance profile...)."""

    bucket: str
    endpoint: str | None = None
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    verify_tls: bool = True
    path_style: bool = True
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    max_attempts: int = 2
    max_connections: int = 64
    part_size: int = DEFAULT_PART_SIZE
    stale_upload_age: timedelta = timedelta(hours=1)
    list_page_size: int = 1000  # keys per ListObjectsV2 page (1000 is S3's maximum)

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE:
            raise ValueError("part_size must be at least 5 MiB (S3's minimum part size)")
        if self.max_attempts < 1 or self.max_connections < 1 or not 1 <= self.list_page_size <= 1000:
            raise ValueError("max_attempts, max_connections and list_page_size (up to 1000) must be positive")


def _error_code(exc: ClientError) -> tuple[str, int]:
    response: dict[str, Any] = exc.response or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _translate_client_error(exc: ClientError) -> ImageVaultError:
    code, status = _error_code(exc)
    if code == "NoSuchBucket":
        return StoreUnavailable("blob store bucket does not exist")
    if code in _NOT_FOUND_CODES or status == 404:
        return NotFound()
    if code in _FULL_CODES or status == 507:
        return InsufficientStorage()
    if code in _DENIED_CODES or status == 403:
        return StoreUnavailable("blob store refused the configured credentials")
    if code in _THROTTLE_CODES or status in (429, 503):
        return StoreUnavailable("blob store is throttling requests", retry_after=2)
    # Error codes and statuses carry no personal data (keys are record ids): log them, since
    # the client only sees a generic 503.
    log.warning("blob store answered HTTP %s %s", status or "?", code or "(no code)")
    return StoreUnavailable()


@contextmanager
def _boundary() -> Iterator[None]:
    """Translate botocore/aiohttp failures into imagevault errors (see the module docstring).

    ``OSError`` covers ``TimeoutError`` (``asyncio.TimeoutError`` is the same class since 3.11)
    and refused or reset connections that surface unwrapped; ``CancelledError`` is a
    ``BaseException`` and passes through untouched.
    """
    try:
        yield
    except ClientError as exc:
        raise _translate_client_error(exc) from exc
    except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
        log.warning("blob store unreachable: %s", exc.__class__.__name__)
        raise StoreUnavailable() from exc


class S3Writer(BlobWriter):
    """A blob on its way into the bucket; see the module docstring for parts and visibility."""

    def __init__(self, backend: S3Backend, key: str) -> None:
        self._backend = backend
        self._key = key
        # A BytesIO, not a bytearray, because it is also the request body: aiohttp sends a
        # BytesIO in 64 KiB slices on the event loop, while a bytes-like body is sliced and
        # joined with the headers into further whole copies (measured: 2.5x the part size).
        self._buffer = io.BytesIO()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._finished = False  # commit() or abort() was called: no more writes
        self._committed = False
        self._aborted = False
        self._maybe_visible = False  # the request that publishes the object was sent

    async def write(self, data: bytes) -> None:
        if self._finished:
            raise ValueError("write() after commit() or abort()")
        self._buffer.write(data)
        threshold = self._backend.settings.part_size + PART_SLACK
        while self._buffer.tell() > threshold:
            await self._send_part(self._backend.settings.part_size)

    def _take(self, size: int) -> io.BytesIO:
        """Split off the first ``size`` buffered bytes as a request body, positioned at 0.

        Only the rest (at most PART_SLACK plus one written piece) is copied, into a new
        buffer; the part itself is not.
        """
        part = self._buffer
        with part.getbuffer() as view:
            rest = io.BytesIO(view[size:])
        rest.seek(0, io.SEEK_END)
        part.truncate(size)
        part.seek(0)
        self._buffer = rest
        return part

    async def _send_part(self, size: int) -> None:
        if len(self._parts) >= MAX_PARTS:
            raise InsufficientStorage("image exceeds the blob store's object size limit")
        part = self._take(size)
        client, bucket = self._backend._client, self._backend.settings.bucket
        with _boundary():
            if self._upload_id is None:
                created = await client.create_multipart_upload(Bucket=bucket, Key=self._key, ContentType=CONTENT_TYPE)
                self._upload_id = created["UploadId"]
                self._backend._active_uploads.add(self._upload_id)
            number = len(self._parts) + 1
            answer = await client.upload_part(
                Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=part
            )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    async def commit(self) -> None:
        if self._finished:
            raise ValueError("commit() after commit() or abort()")
        self._finished = True
        client, bucket = self._backend._client, self._backend.settings.bucket
        try:
            if self._upload_id is None:
                body = self._take(self._buffer.tell())
                self._maybe_visible = True
                with _boundary():
                    await client.put_object(Bucket=bucket, Key=self._key, Body=body, ContentType=CONTENT_TYPE)
            else:
                if self._buffer.tell():
                    await self._send_part(self._buffer.tell())
                self._maybe_visible = True
                with _boundary():
                    await client.complete_multipart_upload(
                        Bucket=bucket, Key=self._key, UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},
                    )
                self._backend._active_uploads.discard(self._upload_id)
        except BaseException:
            try:
                await self.abort()
            except Exception:  # noqa: BLE001 - the commit's own error is the one to report
                log.warning("could not clean up after a failed commit; gc will")
            raise
        self._committed = True

    async def abort(self) -> None:
        """Drop the buffer, abort the multipart upload, and un-publish a commit that failed late.

        Safe to call more than once, after a failed commit, and after a successful commit (then
        it does nothing: the blob stays). Raises ``StoreUnavailable`` if the store cannot be
        reached; the leftover is then removed by ``cleanup_temporary`` or ``gc``.
        """
        self._finished = True
        self._buffer = io.BytesIO()
        if self._committed or self._aborted:
            return
        self._aborted = True
        client, bucket = self._backend._client, self._backend.settings.bucket
        if self._upload_id is not None:
            # From now on the upload is a leftover like any other: if the abort below cannot
            # reach the store, cleanup_temporary in this process must be free to remove it.
            self._backend._active_uploads.discard(self._upload_id)
        with _boundary():
            if self._upload_id is not None:
                try:
                    await client.abort_multipart_upload(Bucket=bucket, Key=self._key, UploadId=self._upload_id)
                except ClientError as exc:
                    if _error_code(exc)[0] != "NoSuchUpload":
                        raise
            if self._maybe_visible:
                # Ids are unique, so this key is ours alone: deleting it cannot hit another blob.
                await client.delete_object(Bucket=bucket, Key=self._key)


class S3Backend(BlobBackend):
    name = "s3"
    read_batch_bytes = READ_BATCH_BYTES

    def __init__(self, settings: S3Settings, client: Any, resources: AsyncExitStack) -> None:
        """Use ``await S3Backend.open(settings)``: the client must be created inside the loop."""
        self.settings = settings
        self._client = client
        self._resources = resources
        # Multipart uploads of writers still open in this process: cleanup_temporary leaves them.
        self._active_uploads: set[str] = set()

    @classmethod
    async def open(cls, settings: S3Settings, *, create_bucket: bool = False) -> S3Backend:
        """Create the client; with ``create_bucket``, create the bucket if it does not exist.

        Without ``create_bucket`` no request is made: a daemon starts even while the store is
        briefly down, and ``/readyz`` reports it.
        """
        # botocore logs every request's parameters at DEBUG, bodies and signatures included:
        # megabytes of ciphertext per part. A daemon run with --log-level DEBUG must not do that.
        for name in ("botocore", "aiobotocore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = AioConfig(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            # total_max_attempts counts the first attempt too (botocore's max_attempts would not).
            retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
            max_pool_connections=settings.max_connections,
            s3={"addressing_style": "path" if settings.path_style else "auto"},
        )
        resources = AsyncExitStack()
        client = await resources.enter_async_context(
            _shared_session().create_client(
                "s3",
                endpoint_url=settings.endpoint,
                region_name=settings.region,
                aws_access_key_id=settings.access_key,
                aws_secret_access_key=settings.secret_key,
                verify=settings.verify_tls,
                config=config,
            )
        )
        backend = cls(settings, client, resources)
        if create_bucket:
            try:
                await backend._ensure_bucket()
            except BaseException:
                await backend.close()
                raise
        return backend

    async def _ensure_bucket(self) -> None:
        bucket = self.settings.bucket
        with _boundary():
            try:
                await self._client.head_bucket(Bucket=bucket)
                return
            except ClientError as exc:
                if _error_code(exc)[1] != 404:
                    raise
            params: dict[str, Any] = {"Bucket": bucket}
            if self.settings.region != "us-east-1":  # us-east-1 refuses an explicit constraint
                params["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
            try:
                await self._client.create_bucket(**params)
            except ClientError as exc:
                if _error_code(exc)[0] != "BucketAlreadyOwnedByYou":  # a concurrent init won
                    raise
        log.info("created blob store bucket")

    @staticmethod
    def key_of(blob_id: str) -> str:
        """The object key of a blob (the id is validated first: ``NotFound`` if invalid)."""
        return BLOB_PREFIX + check_blob_id(blob_id)

    async def open_writer(self, blob_id: str) -> S3Writer:
        # No request yet: the upload starts with the first full part, or is a PutObject.
        return S3Writer(self, self.key_of(blob_id))

    async def read(self, blob_id: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        key = self.key_of(blob_id)
        if length == 0:
            await self.size(blob_id)  # still NotFound for a missing blob, as on the filesystem
            return b""
        with _boundary():
            try:
                answer = await self._client.get_object(
                    Bucket=self.settings.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
                )
            except ClientError as exc:
                if _error_code(exc)[0] == "InvalidRange":
                    return b""  # the offset is at or past the end of the blob
                raise
            async with answer["Body"] as body:
                # A server that ignored the Range header would send the whole object: refuse it
                # before reading, instead of buffering a whole image to slice it.
                if int(answer.get("ContentLength", 0)) > length:
                    raise StoreUnavailable("blob store ignored the byte range")
                data: bytes = await body.read()
        if len(data) > length:
            raise StoreUnavailable("blob store ignored the byte range")
        return data

    async def size(self, blob_id: str) -> int:
        key = self.key_of(blob_id)
        with _boundary():
            answer = await self._client.head_object(Bucket=self.settings.bucket, Key=key)
        return int(answer["ContentLength"])

    async def delete(self, blob_id: str) -> bool:
        key = self.key_of(blob_id)
        # DeleteObject answers 204 whether or not the key existed; the HEAD tells which.
        try:
            await self.size(blob_id)
        except NotFound:
            return False
        with _boundary():
            await self._client.delete_object(Bucket=self.settings.bucket, Key=key)
        return True

    async def list_ids(self) -> AsyncIterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        with _boundary():
            pages = paginator.paginate(Bucket=self.settings.bucket, Prefix=BLOB_PREFIX,
                                       PaginationConfig={"PageSize": self.settings.list_page_size})
            async for page in pages:
                for entry in page.get("Contents", []):
                    blob_id = entry["Key"][len(BLOB_PREFIX):]
                    # Anything else under the prefix was not written by imagevault: leave it.
                    if BLOB_ID_RE.fullmatch(blob_id):
                        yield blob_id

    async def check_writable(self) -> None:
        """Write and delete a 1-byte probe object: proves the bucket is reachable and writable."""
        key = f"{PROBE_PREFIX}{secrets.token_hex(16)}"
        with _boundary():
            await self._client.put_object(Bucket=self.settings.bucket, Key=key, Body=b"\0", ContentType=CONTENT_TYPE)
            await self._client.delete_object(Bucket=self.settings.bucket, Key=key)

    async def cleanup_temporary(self) -> int:
        """Abort multipart uploads under ``blobs/`` older than ``stale_upload_age``, and delete
        probe objects as old; return how many were removed.

        Uploads of writers open in this process are kept whatever their age. The age limit
        protects uploads of *other* daemons sharing the bucket: an upload is only ever as old
        as the slowest image transfer, far less than the default hour. A too-slow upload that
        is aborted fails cleanly (503, nothing stored).
        """
        cutoff = datetime.now(timezone.utc) - self.settings.stale_upload_age
        bucket = self.settings.bucket
        stale_uploads: list[tuple[str, str]] = []
        stale_probes: list[str] = []
        with _boundary():
            uploads = self._client.get_paginator("list_multipart_uploads")
            async for page in uploads.paginate(Bucket=bucket, Prefix=BLOB_PREFIX):
                for upload in page.get("Uploads", []):
                    if upload["UploadId"] not in self._active_uploads and upload["Initiated"] <= cutoff:
                        stale_uploads.append((upload["Key"], upload["UploadId"]))
            objects = self._client.get_paginator("list_objects_v2")
            async for page in objects.paginate(Bucket=bucket, Prefix=PROBE_PREFIX):
                for entry in page.get("Contents", []):
                    if entry["LastModified"] <= cutoff:
                        stale_probes.append(entry["Key"])
            removed = 0
            for key, upload_id in stale_uploads:
                try:
                    await self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                except ClientError as exc:
                    if _error_code(exc)[0] != "NoSuchUpload":  # finished or aborted meanwhile
                        raise
                    continue
                removed += 1
            for key in stale_probes:
                await self._client.delete_object(Bucket=bucket, Key=key)
                removed += 1
        return removed

    async def close(self) -> None:
        await self._resources.aclose()
