"""One record at a time: store an image, read its metadata or bytes, update, shred.

Write path (docs/design.md): validate metadata → take a DEK and start wrapping it → stream the
body through the sealer into a temporary blob → verify the digest → commit the blob (fsync,
rename, fsync dir) → one group-committed LMDB transaction with record, wrapped DEK and index
entries → acknowledge. A crash before the index commit leaves only an orphan blob.

Permission to call each operation at all is checked by the facade; the rules that depend on
what is asked (rectifying a patient id, a legal hold, shortening retention) are checked here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, replace
from typing import Any

from vault.audit.hooks import note, note_update, reason_mac
from vault.auth import Action, Principal
from vault.errors import (
    Conflict, DigestMismatch, IdempotencyKeyMismatch, ImageVaultError, InvalidMetadata, InvalidRequest, NotFound,
    Overloaded, TooLarge, UnsupportedMediaType,
)
from vault.idempotency import upload_material
from vault.ids import encode_id, new_record_id
from vault.index import schema
from vault.index.engine import IndexTxn
from vault.index.records import StoredRecord
from vault.ingest.signature import verified
from vault.ingest.strip import ReceivedStream
from vault.keys.base import key_version_of
from vault.metadata import Metadata, Record, Retention, apply_patch, format_timestamp
from vault.retention.policy import retention_allows_change
from vault.services.context import ServiceContext
from vault.services.datakeys import IndexKeyChanged, TenantKey, TenantKeys, WrapBelowFloor, check_key_floor
from vault.services.idempotency import Claim, IdempotencyOutcomes, upload_fingerprint
from vault.services.reading import ImageHandle, RecordReader, with_personal, without_personal
from vault.index.rendition_jobs import put_state
from vault.services.renditions import initial_state
from vault.services.shredding import SHREDDED, Shredder, ShredRule, refusal_error
from vault.store.backends.base import BlobWriter
from vault.store.format import BlobHeader, derive_subkeys
from vault.store.personal import open_personal, seal_personal
from vault.store.sealer import BlobSealer

log = logging.getLogger(__name__)
# Body bytes gathered before one hop to the crypto pool (see RecordService._seal): large enough
# that the hop costs nothing next to the hashing, small enough to keep memory flat per upload.
SEAL_BATCH = 1 << 20
# Attempts of a metadata update against concurrent updates of the same record.
UPDATE_ATTEMPTS = 5
# Attempts of an upload's index commit while a shred epoch changes the keys under it.
COMMIT_ATTEMPTS = 4
# Called inside the record's index transaction with the new record's id (see create_image).
CommitHook = Callable[[IndexTxn, bytes], None]


@dataclass(frozen=True)
class ShredResult:
    id: str
    shredded: bool


class RecordService:
    def __init__(
        self, context: ServiceContext, reader: RecordReader, shredder: Shredder, outcomes: IdempotencyOutcomes,
    ) -> None:
        self._context = context
        self._reader = reader
        self._shredder = shredder
        self._outcomes = outcomes
        self.uploads_in_flight = 0

    # create --------------------------------------------------------------------------------
    async def create_image(
        self, principal: Principal, metadata: Metadata | Awaitable[Metadata], content_type: str,
        body: AsyncIterator[bytes], *, commit_hook: CommitHook | None = None, idempotency_key: str | None = None,
    ) -> Record:
        """Store one image. ``metadata`` may be an awaitable that resolves once ``body`` is
        exhausted (a multipart upload whose file part came before its metadata part).

        ``commit_hook(txn, record_id)`` runs inside the record's own index transaction (a
        resumable upload marks itself completed there, so the record and that mark commit
        together or not at all); whatever it raises fails the upload like any other error.
        With ``idempotency_key`` (already parsed, ``vault.idempotency``): the first request with
        it stores the image and files its outcome in the same commit; a later one with the same
        key and caller gets that record, re-read now (``Record.replayed``), if the request is
        the same (``IdempotencyKeyMismatch`` otherwise, 404 if the record is gone), and one
        while the first is still in progress ``IdempotencyKeyInFlight``."""
        context = self._context
        content_type = content_type.split(";")[0].strip().lower()
        if content_type not in context.config.allowed_content_types:
            raise UnsupportedMediaType(f"content type {content_type or '(none)'} is not allowed")
        if self.uploads_in_flight >= context.config.max_concurrent_uploads:
            raise Overloaded(retry_after=1)
        self.uploads_in_flight += 1
        context.metrics.uploads_in_flight.inc()
        claim = None
        try:
            if idempotency_key is not None:
                claim = self._outcomes.claim_upload(principal, idempotency_key)
                if claim.found is not None:
                    return await self._replay(principal, claim.found, metadata, content_type, body)
            return await self._create_image(principal, metadata, content_type, body, claim, commit_hook)
        except ImageVaultError as exc:
            context.metrics.rejected_uploads.labels(exc.code).inc()
            raise
        finally:
            if claim is not None:
                self._outcomes.release(claim)
            self.uploads_in_flight -= 1
            context.metrics.uploads_in_flight.dec()

    async def _create_image(
        self, principal: Principal, metadata_in: Metadata | Awaitable[Metadata], content_type: str,
        body: AsyncIterator[bytes], claim: Claim | None = None, commit_hook: CommitHook | None = None,
    ) -> Record:
        context = self._context
        tenant = principal.tenant
        # The head of the file must be of its declared type, before a key is taken or a byte stored.
        body = await verified(body, content_type)
        # Before a data key is taken or a byte stored; for a file-first upload, once its
        # metadata has arrived (and still before the blob is committed).
        if isinstance(metadata_in, Metadata):
            metadata_in = await self._admit(principal, metadata_in)
        else:
            metadata_in = _Admitted(metadata_in, lambda m: self._admit(principal, m))
        now = context.clock()
        rid = new_record_id(now.timestamp())
        rid_text = encode_id(rid)
        if context.dek_pool is not None:
            context.data_keys.drop_if_stale()  # a rotation by another process empties the pool
            dek, wrapped_now = await context.dek_pool.take()
            if key_version_of(wrapped_now) < self._current_kek_version():
                # Rotated since the pool was filled, perhaps by another process (the CLI):
                # every pre-wrapped key is on an old version. Start again from a fresh pool.
                context.dek_pool.clear()
                dek, wrapped_now = await context.dek_pool.take()
            wrap_task: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            wrap_task.set_result(wrapped_now)
        else:
            dek = secrets.token_bytes(32)
            # The KMS round trip overlaps with streaming the body.
            wrap_task = asyncio.ensure_future(context.keys.wrap_data_key(dek))
        writer = None
        committed = False
        try:
            index_key = await context.tenant_keys.write_key(tenant)
            subkeys = derive_subkeys(dek, rid)
            sealer = BlobSealer(subkeys.blob, BlobHeader.new(rid))
            writer = await context.backend.open_writer(rid_text)
            await writer.write(sealer.header_bytes)
            # Metadata stripping (vault/ingest/strip.py) between the client and the sealer; the
            # size limit and the client's digest apply to the bytes as received.
            received = ReceivedStream(body, content_type, context.config.strip_metadata, context.config.max_image_bytes)
            batch: list[bytes] = []
            batched = 0
            async for piece in received:
                if wrap_task.done() and wrap_task.exception() is not None:
                    raise wrap_task.exception()  # KMS down: fail fast, not after the whole body
                batch.append(piece)
                batched += len(piece)
                if batched >= SEAL_BATCH:
                    await self._seal(sealer, batch, received, writer)
                    batch, batched = [], 0
            # Also when only hashing is left: the stripper may have held back the bytes whose
            # received copies still await it.
            if batch or received.hashing_pending:
                await self._seal(sealer, batch, received, writer)
            await writer.write(sealer.finalize())
            metadata = metadata_in if isinstance(metadata_in, Metadata) else await metadata_in
            digest = sealer.sha256_hex
            received_digest = received.received_sha256 or digest
            if metadata.sha256 is not None and metadata.sha256 != received_digest:
                raise DigestMismatch()
            wrapped = await wrap_task
            outcome = None
            if claim is not None:
                material = upload_material(metadata.to_json(), content_type, received_digest)
                outcome = {"kind": "upload", "record": rid_text, "request": upload_fingerprint(dek, rid, material)}
            await writer.commit()
            committed = True
            stamp = format_timestamp(now)
            stored = StoredRecord(
                id=rid,
                tenant=tenant,
                metadata=without_personal(metadata),
                sealed=seal_personal(subkeys.metadata, rid, metadata.personal()),
                patient_hmac=await self._patient_hmac(tenant, metadata.patient_id, index_key),
                content_type=content_type,
                size=sealer.plaintext_size,
                sha256=digest,
                created_at=stamp,
                updated_at=stamp,
                retain_until=format_timestamp(context.retention.retain_until(metadata, tenant)),
                received_sha256=received_digest if received_digest != digest else None,
            )

            for _ in range(COMMIT_ATTEMPTS):
                def insert(txn: IndexTxn, stored: StoredRecord = stored, wrapped: str = wrapped,
                           index_key: TenantKey = index_key) -> None:
                    check_key_floor(txn, wrapped)
                    TenantKeys.check_write_key(txn, tenant, index_key.wrapped)
                    txn.put_dek(rid, wrapped)
                    txn.put_record(stored)
                    txn.bump_stats(tenant, 1, stored.size)
                    # Its rendition job, in the same commit: a crash after the 201 loses none.
                    put_state(txn, rid, initial_state(content_type))
                    if claim is not None and outcome is not None:
                        # In the record's own commit: a retry finds the record or nothing at all.
                        self._outcomes.put(txn, claim, outcome, now)
                    if commit_hook is not None:
                        commit_hook(txn, rid)

                try:
                    await context.index.write(insert)
                    break
                except WrapBelowFloor:
                    # The KEK version this DEK was wrapped under is being retired: wrap the
                    # DEK (still in hand) again under the current version.
                    wrapped = await context.keys.wrap_data_key(dek)
                except IndexKeyChanged:
                    index_key = await context.tenant_keys.write_key(tenant)
                    stored = stored.with_changes(patient_hmac=await self._patient_hmac(tenant, metadata.patient_id, index_key))
            else:
                raise Conflict("the archive's keys changed repeatedly during this upload; retry")
        except BaseException:
            if not wrap_task.done():
                wrap_task.cancel()
            if writer is not None:
                if committed:
                    await _quietly(context.backend.delete(rid_text))
                else:
                    await _quietly(writer.abort())
            raise
        context.metrics.bytes_stored.inc(stored.size)
        context.metrics.changed_records(1)
        context.data_keys.remember(rid, dek)
        return self._reader.to_record(stored, dek, wrapped, initial_state(content_type))

    async def _replay(
        self, principal: Principal, found: dict[str, Any], metadata_in: Metadata | Awaitable[Metadata],
        content_type: str, body: AsyncIterator[bytes],
    ) -> Record:
        """The record an earlier upload with this key created, re-read now, once this request
        has been found to be the same: the body is read and hashed (not stored) and compared
        with the first request's fingerprint before anything is answered."""
        context = self._context
        record_id = str(found["record"])
        # 404 without reading the body when the record is gone: shredded since (its key, and
        # with it the fingerprint's, is gone too), or it is not this tenant's.
        stored, wrapped = self._reader.load(principal, record_id)
        dek = await context.data_keys.unwrap_one(stored.id, wrapped)
        received = await _received_digest(body, context.config.max_image_bytes, context)
        metadata = metadata_in if isinstance(metadata_in, Metadata) else await metadata_in
        material = upload_material(metadata.to_json(), content_type, received)
        if not hmac.compare_digest(upload_fingerprint(dek, stored.id, material), str(found.get("request", ""))):
            raise IdempotencyKeyMismatch()
        note(idempotent_replay=True)
        stored, wrapped = self._reader.load(principal, record_id)  # as it is now, after the body
        return replace(self._reader.to_record(stored, dek, wrapped, self._reader.rendition_state(stored.id)), replayed=True)

    def _current_kek_version(self) -> int:
        versions = self._context.index.read(lambda t: t.get_doc(schema.DB_META, schema.META_KEY_VERSIONS))
        return 0 if versions is None else versions.get("current", 0)

    async def _seal(
        self, sealer: BlobSealer, pieces: list[bytes], received: ReceivedStream, writer: BlobWriter
    ) -> None:
        """Hash, encrypt and (filesystem) write ``pieces`` in one crypto-thread job, off the
        event loop; hash the received bytes queued meanwhile (when stripping changed them) in
        the same job.

        Under 16 concurrent uploads SHA-256 alone took a quarter of the event loop's time
        (~1.4 GB/s per core against ~9 GB/s for AES-GCM). hashlib and AES-GCM release the GIL
        on large buffers, so on a thread they run beside the loop, which meanwhile parses
        other uploads. Writing in the same job saves a second thread hop per batch (thread
        wake-ups and GIL hand-offs cost ~15% of the daemon's CPU otherwise). Same bytes, same
        order: the caller awaits each batch before sending the next, so one sealer and one
        writer are only ever used by one thread at a time.
        """
        sealed = await asyncio.get_running_loop().run_in_executor(
            self._context.crypto_pool, _seal_pieces, sealer, pieces, received, received.take_unhashed(), writer
        )
        if sealed:
            await writer.write(sealed)

    # read ----------------------------------------------------------------------------------
    async def get_record(self, principal: Principal, record_id: str) -> Record:
        stored, wrapped = self._reader.load(principal, record_id)
        return (await self._reader.records_for(principal, [(stored, wrapped)]))[0]

    async def open_image(self, principal: Principal, record_id: str) -> ImageHandle:
        stored, wrapped = self._reader.load(principal, record_id)
        dek = await self._context.data_keys.unwrap_one(stored.id, wrapped)
        record = self._reader.to_record(stored, dek if principal.sees_personal_data else None, wrapped,
                                        self._reader.rendition_state(stored.id))
        return ImageHandle(record, self._reader.blob_stream(principal, stored, dek), self._reader.buffers)

    # update --------------------------------------------------------------------------------
    async def update_metadata(self, principal: Principal, record_id: str, patch: Any) -> Record:
        context = self._context
        if isinstance(patch, dict) and "patient_id" in patch:
            principal.require(Action.RECTIFY_PATIENT)
        if isinstance(patch, dict) and "legal_hold" in patch:
            principal.require(Action.LEGAL_HOLD)
        for _ in range(UPDATE_ATTEMPTS):
            stored, wrapped = self._reader.load(principal, record_id)
            dek = await context.data_keys.unwrap_one(stored.id, wrapped)
            subkeys = derive_subkeys(dek, stored.id)
            current = with_personal(stored.metadata, open_personal(subkeys.metadata, stored.id, stored.sealed))
            updated = apply_patch(current, patch)
            index_key = await context.tenant_keys.write_key(stored.tenant)
            new = stored.with_changes(
                metadata=without_personal(updated),
                sealed=seal_personal(subkeys.metadata, stored.id, updated.personal())
                if updated.personal() != current.personal() else stored.sealed,
                patient_hmac=await self._patient_hmac(stored.tenant, updated.patient_id, index_key),
                updated_at=format_timestamp(context.clock()),
                retain_until=format_timestamp(context.retention.retain_until(updated, stored.tenant)),
            )
            if not retention_allows_change(stored.retain_until_dt(), new.retain_until_dt()):
                # Shortening retention (class, date, or captured_at) would let a plain delete
                # skip the obligation: it is the DPO's override, like DELETE ?override=true.
                principal.require(Action.OVERRIDE_RETENTION)
            before = stored.to_bytes()

            def replace_if_unchanged(txn: IndexTxn) -> bool:
                latest = txn.get_record(stored.id)
                if latest is None:
                    raise NotFound()
                if latest.to_bytes() != before:
                    return False  # a concurrent update won; recompute from the new state
                try:
                    TenantKeys.check_write_key(txn, stored.tenant, index_key.wrapped)
                except IndexKeyChanged:
                    return False  # an epoch replaced the index key; recompute the HMAC
                txn.put_record(new, latest)
                return True

            if await context.index.write(replace_if_unchanged):
                note_update(stored, new, patch)
                return self._reader.to_record(new, dek if principal.sees_personal_data else None, wrapped,
                                              self._reader.rendition_state(new.id))
        raise Conflict("record is being updated concurrently; retry")

    # shred ---------------------------------------------------------------------------------
    async def shred_record(
        self, principal: Principal, record_id: str, *, reason: str | None = None, override: bool = False
    ) -> ShredResult:
        """Crypto-shred one record: key, record and index entries in one transaction, then the blob."""
        if override:
            principal.require(Action.OVERRIDE_RETENTION)
        stored, _ = self._reader.load(principal, record_id)
        # An override counts only with a reason; without one the retention rule applies as if
        # none was asked for (409 retention_obligation if the record is still retained).
        override = override and bool(reason and reason.strip())
        index_key = await self._context.tenant_keys.get(principal.tenant)
        note(override=override, reason_hmac=reason_mac(index_key, reason))
        rule = ShredRule(self._context.clock(), principal.tenant, override_retention=override)
        (decision,) = await self._shredder.shred([stored.id], rule)
        if decision.code is not SHREDDED:
            raise refusal_error(decision.code)
        return ShredResult(encode_id(stored.id), True)

    # upload policy and patient ids -----------------------------------------------------------
    async def admit(self, principal: Principal, metadata: Metadata) -> Metadata:
        """The upload-time policy (``_admit``), for a resumable upload at its creation: refused
        there, before any byte is accepted, rather than at its last PATCH."""
        return await self._admit(principal, metadata)

    async def _admit(self, principal: Principal, metadata: Metadata) -> Metadata:
        """Upload-time policy = patch-time policy: what only the DPO may change later, only the
        DPO may set at upload. A legal hold needs LEGAL_HOLD; an ``until`` date earlier than
        the tenant's medical default (a date already past included) needs OVERRIDE_RETENTION,
        as a patch making ``retain_until`` earlier does. The retention class (``medical``,
        ``aesthetic``) stays the clinician's call. Then the patient id must suit the tenant's
        scheme (400 ``invalid_metadata`` naming ``patient_id``)."""
        context = self._context
        if metadata.legal_hold:
            principal.require(Action.LEGAL_HOLD)
        if metadata.retention.cls == "until":
            until = context.retention.retain_until(metadata, principal.tenant)
            medical = context.retention.retain_until(replace(metadata, retention=Retention()), principal.tenant)
            if until <= context.clock() or not retention_allows_change(medical, until):
                principal.require(Action.OVERRIDE_RETENTION)
        await self._patient_hmac(principal.tenant, metadata.patient_id)
        return metadata

    async def _patient_hmac(self, tenant: str, patient_id: str, key: TenantKey | None = None) -> bytes:
        """The record's blind-index value; an id the tenant's scheme refuses is a metadata error."""
        try:
            return await self._context.tenant_keys.patient_hmac(tenant, patient_id, self._context.config, key)
        except InvalidRequest as exc:
            raise InvalidMetadata("patient_id", exc.message) from exc


def _seal_pieces(
    sealer: BlobSealer, pieces: list[bytes], received: ReceivedStream, unhashed: list[bytes], writer: BlobWriter
) -> bytes | None:
    """Runs on a crypto thread (see ``RecordService._seal``). Writes the sealed batch itself when
    the writer can write from a thread; otherwise returns it, as bytes, for an async write."""
    received.hash_received(unhashed)
    if not pieces:
        return None
    if writer.supports_blocking_write:
        # Written here, before this job ends: the sealer's scratch buffer can serve every batch.
        sealed = sealer.update_many(pieces, scratch=True)
        if sealed:
            writer.write_blocking(sealed)
        return None
    sealed = sealer.update_many(pieces)
    return bytes(sealed) if sealed else None


async def _received_digest(body: AsyncIterator[bytes], limit: int, context: ServiceContext) -> str:
    """SHA-256 of a body as received (hashed on the crypto pool a batch at a time), bounded by
    the image size limit like an upload."""
    digest = hashlib.sha256()
    loop = asyncio.get_running_loop()
    batch: list[bytes] = []
    batched = size = 0
    async for piece in body:
        size += len(piece)
        if size > limit:
            raise TooLarge(f"image exceeds the limit of {limit} bytes")
        batch.append(piece)
        batched += len(piece)
        if batched >= SEAL_BATCH:
            await loop.run_in_executor(context.crypto_pool, _hash_pieces, digest, batch)
            batch, batched = [], 0
    if batch:
        await loop.run_in_executor(context.crypto_pool, _hash_pieces, digest, batch)
    return digest.hexdigest()


def _hash_pieces(digest: Any, pieces: list[bytes]) -> None:
    for piece in pieces:
        digest.update(piece)


class _Admitted:
    """The metadata of a file-first upload, checked by ``admit`` once it has arrived. An
    awaitable rather than a coroutine: an upload that fails before its metadata part never
    awaits it, and an unawaited coroutine would be reported as a bug."""

    def __init__(self, pending: Awaitable[Metadata], admit: Callable[[Metadata], Awaitable[Metadata]]) -> None:
        self._pending = pending
        self._admit = admit

    def __await__(self) -> Generator[Any, None, Metadata]:
        metadata = yield from self._pending.__await__()
        return (yield from self._admit(metadata).__await__())


async def _quietly(awaitable: Any) -> None:
    """Best-effort cleanup: never let a cleanup failure mask the original error."""
    try:
        await awaitable
    except Exception:  # noqa: BLE001
        log.warning("cleanup step failed", exc_info=False)
