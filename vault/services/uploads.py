"""Resumable uploads (the tus 1.0.0 protocol's state machine; the HTTP side is
``vault/api/handlers/uploads.py``).

An upload is created with its length, its record metadata and its content type; the metadata is
validated and the upload-time policy applied then, before any byte is accepted. Bytes arrive in
PATCHes at the upload's offset. Every PATCH but the last is sealed, as it streams, into a
*segment* under the upload's own key (``vault.store.staging``) and stored in the blob store;
the upload's state (offset, segments, expiry), sealed in the index, then moves on in one
compare-and-set commit. The last PATCH is not staged: the stored segments, decrypted, followed by
the PATCH's own bytes are one async iterator of chunks fed to the ordinary ingest
(``RecordService.create_image``: stripping, digests, checks, one commit, audit), so a tus upload
and a POST of the same bytes give the same record.

Completion is idempotent: the record's own index transaction marks the upload completed with the
record id, unlists its segments and deletes the upload key (``commit_hook``), so a crash can
leave at most segments that nothing can decrypt, which gc removes as orphans; a client that lost the completing
answer finds the record id in HEAD (``Content-Location``). A crash before that commit leaves the
upload at its previous offset: the client sends its last chunk again.

One request at a time per upload (a lock per upload id, in this process; one daemon serves a
data directory): a PATCH arriving while an interrupted one is still being settled waits for it,
then sees the offset it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from vault.auth import Principal
from vault.errors import (
    ChecksumMismatch, ClientDisconnected, DigestMismatch, Forbidden, IndexTampered,
    InvalidMetadata, InvalidRequest, NotFound, OffsetMismatch, Overloaded, RequestTimeout, TooLarge,
    UnknownField, UnsupportedMediaType,
)
from vault.ids import decode_id, encode_id, new_record_id
from vault.index import schema
from vault.index.engine import IndexTxn
from vault.index.uploads import Segment, UploadState
from vault.metadata import Metadata, Record, format_timestamp, parse_metadata
from vault.services.context import ServiceContext
from vault.services.datakeys import WrapBelowFloor, check_key_floor
from vault.services.records import SEAL_BATCH, CommitHook
from vault.store.format import BlobHeader
from vault.store.sealer import BlobSealer, open_range
from vault.store.staging import open_upload_metadata, seal_upload_metadata, segment_key

log = logging.getLogger(__name__)
# Segments one upload may have: each PATCH but the last adds one (an interrupted PATCH too).
# Bounds the state's size in the index and the objects one upload leaves in the blob store.
MAX_SEGMENTS = 4096
# How a completion failure that the same bytes would meet again ends the upload: a retry of the
# last chunk cannot succeed, so the upload is terminated and its staged data deleted.
_FINAL_ERRORS = (DigestMismatch, UnsupportedMediaType, TooLarge, InvalidMetadata, UnknownField, Forbidden)

Admit = Callable[[Principal, Metadata], Awaitable[Metadata]]
Complete = Callable[[Principal, Metadata, str, AsyncIterator[bytes], CommitHook], Awaitable[Record]]


@dataclass(frozen=True)
class UploadRequest:
    """A creation: ``metadata_json`` is the document as the client sent it (validated into
    ``metadata``), kept sealed and parsed again at completion."""

    length: int
    metadata: Metadata
    metadata_json: bytes
    content_type: str


@dataclass(frozen=True)
class Chunk:
    """One PATCH: ``length`` bytes (Content-Length) claimed to start at ``offset``;
    ``checksum`` the Upload-Checksum (hashlib algorithm name, digest), if one was sent."""

    offset: int
    length: int
    body: AsyncIterator[bytes]
    checksum: tuple[str, bytes] | None = None

    def new_digest(self) -> hashlib._Hash | None:
        return hashlib.new(self.checksum[0]) if self.checksum is not None else None

    def matches(self, digest: hashlib._Hash | None) -> bool:
        return self.checksum is None or (digest is not None and digest.digest() == self.checksum[1])


@dataclass(frozen=True)
class UploadStatus:
    id: str
    offset: int
    length: int
    expires_at: datetime
    content_type: str
    record_id: str | None = None
    metadata_json: bytes | None = None  # for HEAD's Upload-Metadata, while the upload is open
    # The audit entry's record ids: none (the upload id is no record id; it is in the details).
    audit_ids: tuple[str, ...] = ()


class _Locks:
    """One asyncio lock per upload id, dropped when no one holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[bytes, tuple[asyncio.Lock, list[int]]] = {}

    def busy(self, upload_id: bytes) -> bool:
        return upload_id in self._locks

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: bytes) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(upload_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[upload_id]


def _expires(state: UploadState) -> datetime:
    return datetime.fromisoformat(state.expires_at)


def _bump_open(txn: IndexTxn, tenant: str, uploads: int, size: int) -> dict[str, int]:
    key = schema.upload_stats_key(tenant)
    doc = txn.get_doc(schema.DB_META, key) or {"open": 0, "bytes": 0}
    doc = {"open": max(0, doc["open"] + uploads), "bytes": max(0, doc["bytes"] + size)}
    txn.put_doc(schema.DB_META, key, doc)
    return doc


def _seal_batch(sealer: BlobSealer, pieces: list[bytes], digest: hashlib._Hash | None) -> bytes:
    """On a crypto thread: the checksum and AES-GCM of one batch of a staged PATCH."""
    if digest is not None:
        for piece in pieces:
            digest.update(piece)
    return bytes(sealer.update_many(pieces))


class UploadService:
    def __init__(self, context: ServiceContext, admit: Admit, complete: Complete) -> None:
        self._context = context
        self._admit = admit
        self._complete = complete
        self._locks = _Locks()

    # creation --------------------------------------------------------------------------------
    async def create(self, principal: Principal, request: UploadRequest) -> UploadStatus:
        context = self._context
        config = context.config
        if request.length < 0:
            raise InvalidRequest("Upload-Length must be a non-negative integer")
        if request.length > config.max_image_bytes or request.length > config.max_open_upload_bytes:
            raise TooLarge(f"Upload-Length exceeds the limit of {min(config.max_image_bytes, config.max_open_upload_bytes)} bytes")
        content_type = request.content_type.split(";")[0].strip().lower()
        if content_type not in config.allowed_content_types:
            raise UnsupportedMediaType(f"content type {content_type or '(none)'} is not allowed")
        await self._admit(principal, request.metadata)
        upload_id = secrets.token_bytes(16)
        key, wrapped = await self._new_key()
        now = context.clock()
        stamp = format_timestamp(now)
        state = UploadState(
            id=upload_id, tenant=principal.tenant, owner=principal.name, on_behalf_of=principal.on_behalf_of,
            length=request.length, offset=0, content_type=content_type,
            metadata_sealed=seal_upload_metadata(key, upload_id, request.metadata_json),
            created_at=stamp, expires_at=format_timestamp(now + timedelta(seconds=config.upload_expiry)),
        )

        for _ in range(4):
            def insert(txn: IndexTxn, wrapped: str = wrapped) -> None:
                check_key_floor(txn, wrapped)
                counts = _bump_open(txn, state.tenant, 1, state.length)
                if counts["open"] > config.max_open_uploads:
                    raise Overloaded(f"this tenant has {config.max_open_uploads} resumable uploads open; "
                                     "finish or terminate one", retry_after=60)
                if counts["bytes"] > config.max_open_upload_bytes:
                    raise Overloaded("this tenant's open resumable uploads hold their limit of bytes; "
                                     "finish or terminate one", retry_after=60)
                txn.put_dek(upload_id, wrapped)
                txn.put_upload(state)

            try:
                await context.index.write(insert)
                break
            except WrapBelowFloor:
                wrapped = await context.keys.wrap_data_key(key)
        context.data_keys.remember(upload_id, key)
        return self._status(state)

    async def _new_key(self) -> tuple[bytes, str]:
        context = self._context
        if context.dek_pool is not None:
            context.data_keys.drop_if_stale()  # a rotation by another process empties the pool
            return await context.dek_pool.take()
        key = secrets.token_bytes(32)
        return key, await context.keys.wrap_data_key(key)

    # reading the state -------------------------------------------------------------------------
    def _load(self, principal: Principal, upload_text: str) -> UploadState:
        """The caller's own, unexpired upload; anyone else's, or none, is ``NotFound`` alike."""
        try:
            upload_id = decode_id(upload_text)
        except NotFound:
            raise NotFound("no such upload") from None
        state = self._context.index.read(lambda t: t.get_upload(upload_id))
        if (state is None or state.tenant != principal.tenant or state.owner != principal.name
                or state.on_behalf_of != principal.on_behalf_of or _expires(state) <= self._context.clock()):
            raise NotFound("no such upload")
        return state

    def _status(self, state: UploadState, metadata_json: bytes | None = None) -> UploadStatus:
        return UploadStatus(state.id_text, state.offset, state.length, _expires(state), state.content_type,
                            state.record_id, metadata_json)

    async def status(self, principal: Principal, upload_text: str) -> UploadStatus:
        """HEAD: the offset, once any PATCH still running on the upload has settled."""
        state = self._load(principal, upload_text)
        async with self._locks.hold(state.id):
            state = self._load(principal, upload_text)
            if state.completed:
                return self._status(state)
            key = await self._context.data_keys.unwrap_one(state.id)
            return self._status(state, open_upload_metadata(key, state.id, state.metadata_sealed))

    # appending -----------------------------------------------------------------------------------
    async def append(self, principal: Principal, upload_text: str, chunk: Chunk) -> UploadStatus:
        state = self._load(principal, upload_text)
        async with self._locks.hold(state.id):
            state = self._load(principal, upload_text)
            if state.completed:
                if chunk.offset == state.length and chunk.length == 0:
                    return self._status(state)  # the completing answer, asked for again
                raise OffsetMismatch()
            if chunk.offset != state.offset:
                raise OffsetMismatch()
            if chunk.offset + chunk.length > state.length:
                raise InvalidRequest("the chunk would pass Upload-Length")
            key = await self._context.data_keys.unwrap_one(state.id)
            if chunk.offset + chunk.length == state.length:
                return await self._finish(principal, state, key, chunk)
            if len(state.segments) >= MAX_SEGMENTS:
                raise TooLarge(f"an upload takes at most {MAX_SEGMENTS} chunks; send larger ones")
            return await self._stage(state, key, chunk)

    async def _stage(self, state: UploadState, key: bytes, chunk: Chunk) -> UploadStatus:
        """Seal one PATCH into a new segment. Bytes of a PATCH cut short are kept (tus: the
        server stores what it received), unless the PATCH carried a checksum, which they
        cannot match."""
        context = self._context
        if chunk.length == 0:
            return self._status(state)
        segment_id = new_record_id(context.clock().timestamp())
        blob_id = encode_id(segment_id)
        sealer = BlobSealer(segment_key(key, segment_id), BlobHeader.new(segment_id), sha256=False)
        digest = chunk.new_digest()
        loop = asyncio.get_running_loop()
        writer = await context.backend.open_writer(blob_id)
        committed = False
        interrupted: BaseException | None = None
        received = 0
        try:
            await writer.write(sealer.header_bytes)
            batch: list[bytes] = []
            batched = 0
            try:
                async for piece in chunk.body:
                    if received + len(piece) > chunk.length:
                        raise InvalidRequest("the body is longer than its Content-Length")
                    batch.append(piece)
                    batched += len(piece)
                    received += len(piece)
                    if batched >= SEAL_BATCH:
                        await writer.write(await loop.run_in_executor(context.crypto_pool, _seal_batch, sealer, batch, digest))
                        batch, batched = [], 0
                if received < chunk.length:
                    raise ClientDisconnected()
            except (ClientDisconnected, RequestTimeout, asyncio.CancelledError) as exc:
                # A lost connection (or a server that cancels the handler when it sees one):
                # what arrived is still sealed and kept, then the interruption goes on up.
                interrupted = exc
            if batch:
                await writer.write(await loop.run_in_executor(context.crypto_pool, _seal_batch, sealer, batch, digest))
            if chunk.checksum is not None:
                if interrupted is not None:
                    raise interrupted
                if not chunk.matches(digest):
                    raise ChecksumMismatch()
            if received == 0:
                raise interrupted or ClientDisconnected()
            await writer.write(sealer.finalize())
            await writer.commit()
            committed = True
            segment = Segment(blob_id, received)
            renewed = format_timestamp(context.clock() + timedelta(seconds=context.config.upload_expiry))

            def advance(txn: IndexTxn) -> UploadState:
                current = txn.get_upload(state.id)
                if current is None:
                    raise NotFound("no such upload")
                if current.completed or current.offset != state.offset:
                    raise OffsetMismatch()
                new = current.with_changes(offset=current.offset + received,
                                           segments=current.segments + (segment,), expires_at=renewed)
                txn.put_upload(new)
                return new

            new_state = await context.index.write(advance)
        except BaseException:
            if committed:
                await _quietly(context.backend.delete(blob_id))
            else:
                await _quietly(writer.abort())
            raise
        if interrupted is not None:
            raise interrupted  # no one is left to read an answer; the bytes are kept
        return self._status(new_state)

    async def _finish(self, principal: Principal, state: UploadState, key: bytes, chunk: Chunk) -> UploadStatus:
        """The last PATCH: the staged segments and this PATCH's bytes, through the ingest."""
        context = self._context
        try:
            document = json.loads(open_upload_metadata(key, state.id, state.metadata_sealed))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequest("the upload's metadata is not valid JSON") from exc
        metadata = parse_metadata(document)
        completed_at = context.clock()

        def mark_completed(txn: IndexTxn, record_id: bytes) -> None:
            current = txn.get_upload(state.id)
            if current is None:
                raise NotFound("no such upload")
            if current.completed or current.offset != state.offset:
                raise OffsetMismatch()
            # The segments leave the state here: from this commit on they are undecryptable
            # orphans (their key goes too), deleted just below or, after a crash, by gc.
            txn.put_upload(current.with_changes(
                offset=current.length, record_id=encode_id(record_id), segments=(),
                expires_at=format_timestamp(completed_at + timedelta(seconds=context.config.upload_expiry)),
            ))
            txn.delete_key(schema.DB_DEKS, state.id)  # every staged byte unreadable from this commit on
            _bump_open(txn, current.tenant, -1, -current.length)

        try:
            record = await self._complete(principal, metadata, state.content_type,
                                          self._all_bytes(state, key, chunk), mark_completed)
        except _FINAL_ERRORS:
            await self._discard(state)
            raise
        context.data_keys.forget([state.id])
        await self._delete_segments(state)
        return self._status(state.with_changes(offset=state.length, record_id=record.id))

    async def _all_bytes(self, state: UploadState, key: bytes, chunk: Chunk) -> AsyncIterator[bytes]:
        """The upload's plaintext: each segment authenticated chunk by chunk as it is read, then
        the last PATCH's body, whose length and checksum are checked before it ends (so the
        ingest, which commits only after its input ends, never commits a short or wrong body)."""
        context = self._context
        for segment in state.segments:
            raw = decode_id(segment.blob_id)
            async for piece in open_range(
                context.backend, segment.blob_id, segment_key(key, raw), raw, 0, segment.size,
                expected_size=segment.size, executor=context.crypto_pool,
            ):
                yield piece
        digest = chunk.new_digest()
        received = 0
        async for piece in chunk.body:
            received += len(piece)
            if received > chunk.length:
                raise InvalidRequest("the body is longer than its Content-Length")
            if digest is not None:
                digest.update(piece)
            yield piece
        if received < chunk.length:
            raise ClientDisconnected()
        if not chunk.matches(digest):
            raise ChecksumMismatch()

    # ending ----------------------------------------------------------------------------------------
    async def terminate(self, principal: Principal, upload_text: str) -> UploadStatus:
        state = self._load(principal, upload_text)
        async with self._locks.hold(state.id):
            state = self._load(principal, upload_text)
            await self._discard(state)
        return self._status(state)

    async def _discard(self, state: UploadState) -> None:
        """Delete an upload: its state and key in one commit (its staged bytes are unreadable
        from then on), then its segments."""

        def drop(txn: IndexTxn) -> None:
            current = txn.get_upload(state.id)
            if current is None:
                return
            txn.delete_upload(state.id)
            txn.delete_key(schema.DB_DEKS, state.id)
            if not current.completed:
                _bump_open(txn, current.tenant, -1, -current.length)

        await self._context.index.write(drop)
        self._context.data_keys.forget([state.id])
        await self._delete_segments(state)

    async def _delete_segments(self, state: UploadState) -> None:
        """Best effort, after the commit that unlisted them and destroyed their key: a segment
        left behind is an orphan that nothing can decrypt, which gc (or start-up recovery)
        removes like any other."""
        for segment in state.segments:
            await _quietly(self._context.backend.delete(segment.blob_id))

    async def purge(self) -> int:
        """Delete every expired upload (state and key in one commit, then its segments). How
        many were deleted. An upload a request is working on is left for the next run."""
        context = self._context
        now = context.clock()

        def scan(txn: IndexTxn) -> list[UploadState]:
            found = []
            for upload_id in txn.iter_upload_ids():
                try:
                    state = txn.get_upload(upload_id)
                except IndexTampered:
                    continue  # counted by the seal; never acted on
                if state is not None and _expires(state) <= now:
                    found.append(state)
            return found

        purged = 0
        for state in await context.index.read_off_loop(scan):
            if self._locks.busy(state.id):
                continue
            async with self._locks.hold(state.id):
                await self._discard(state)
                purged += 1
        return purged


async def _quietly(awaitable: Awaitable[object]) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001 - best-effort cleanup must not mask the original error
        log.warning("cleanup of a staged upload segment failed")

