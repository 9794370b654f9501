"""The service object: keys + blob store + index composed into the operations of API.md.

The HTTP layer, the CLI, the tests and the benchmarks all call ``Vault``; none of them touch
keys, blobs or LMDB directly. Every public method takes the caller's ``Principal`` first and
checks its permission here (through ``vault.auth``), so no entry point can skip a check.

Write path (DESIGN.md): validate metadata → generate the DEK and start wrapping it → stream the
body through the sealer into a temporary blob → verify the digest → commit the blob (fsync,
rename, fsync dir) → one group-committed LMDB transaction with record, wrapped DEK and index
entries → acknowledge. A crash before the index commit leaves only an orphan blob.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault import codec
from vault import __version__
from vault.audit.chain import GLOBAL_SCOPE, AuditAction
from vault.audit.hooks import append_event, audited, note, note_update, reason_mac, search_filters
from vault.audit.store import AuditLog, AuditPage, VerifyResult
from vault.auth import Action, Principal, Role
from vault.config import Config
from vault.errors import (
    BlobCorrupt, Conflict, DigestMismatch, Forbidden, ImageVaultError, IndexUnavailable,
    KeyMaterialError, NotFound, Overloaded, Unavailable, UnsupportedMediaType,
)
from vault.ids import decode_id, encode_id, new_record_id
from vault.index import schema
from vault.index.lmdb import Index, IndexTxn
from vault.index.records import StoredRecord
from vault.ingest.strip import ReceivedStream
from vault.keys.base import KeyProvider, key_version_of
from vault.keys.cache import DekCache
from vault.keys.pool import DekPool
from vault.metadata import Metadata, Record, apply_patch, format_timestamp
from vault.metrics import Metrics
from vault.retention.policy import RetentionPolicy, parse_tenant_years, retention_allows_change
from vault.retention.shredder import SHREDDED, ShredRule, refusal_error, shred_records
from vault.search import SearchQuery, encode_cursor
from vault.tokens import TokenStore
from vault.rewrap import KeyReport, KeyRotation, RewrapState
from vault.store.backends.base import BlobBackend, BlobWriter
from vault.store.format import DEFAULT_CHUNK_EXP, BlobHeader, derive_metadata_key, derive_subkeys
from vault.store.sealer import BlobSealer, open_range

# Privacy operations (issue 4) live in their own modules; only their entry points are here.
from vault import export as _export
from vault.patients import ErasureRequest, ExportRequest, HoldRequest
from vault.retention import erasure as _erasure, sweeper as _sweeper

log = logging.getLogger(__name__)

_META_AAD = b"imagevault/v1/record-metadata"
# Body bytes gathered before one hop to the crypto pool (see Vault._seal): large enough that
# the hop costs nothing next to the hashing, small enough to keep memory flat per upload.
SEAL_BATCH = 1 << 20


@dataclass(frozen=True)
class SearchPage:
    items: list[Record]
    next_cursor: str | None


@dataclass(frozen=True)
class ShredResult:
    id: str
    shredded: bool


@dataclass
class ImageHandle:
    """An open image: its record and a way to stream any byte range of its plaintext."""

    record: Record
    _stream: Callable[[int, int], AsyncIterator[bytes]] = field(repr=False)

    @property
    def size(self) -> int:
        return self.record.size

    def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Plaintext bytes [start, end); each chunk authenticated before any of it is yielded."""
        return self._stream(start, self.record.size if end is None else end)


@dataclass(frozen=True)
class Readiness:
    ok: bool
    checks: dict[str, str]


@dataclass(frozen=True)
class GcResult:
    """What ``collect_garbage`` did. No record ids: the counts are what an operator needs."""

    scanned: int  # committed blobs looked at
    removed: int  # orphans deleted
    kept_recent: int  # orphans younger than the age limit, left for a later run
    temporary: int  # leftovers of interrupted writes removed (temp files, multipart uploads)

    def to_json(self) -> dict[str, int]:
        return {"scanned": self.scanned, "removed": self.removed, "kept_recent": self.kept_recent,
                "temporary": self.temporary}


# An orphan must be at least this old (by its id) before gc removes it; see collect_garbage.
GC_MIN_AGE = timedelta(hours=1)
_GC_BATCH = 256


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Vault:
    """imagevault's operations. Create with ``await Vault.open(config)``; ``await close()``."""

    def __init__(
        self,
        config: Config,
        keys: KeyProvider,
        backend: BlobBackend,
        index: Index,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime] = _now,
        audit: AuditLog | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        self.backend = backend
        self.index = index
        self.metrics = metrics
        self.clock = clock
        self.retention = RetentionPolicy(
            config.medical_retention_years, config.aesthetic_retention_months,
            parse_tenant_years(config.medical_retention_by_tenant),
        )
        # The audit trail: its own LMDB environment beside the index (vault/audit/store.py).
        self.audit = audit if audit is not None else AuditLog(config.audit_dir, clock, map_size=config.lmdb_map_size)
        self.dek_cache = DekCache(config.dek_cache_size, config.dek_cache_ttl)
        self._tenant_keys: dict[str, bytes] = {}
        self._tenant_key_locks: dict[str, asyncio.Lock] = {}
        self._uploads = 0
        self.tokens = TokenStore(index, clock, audit=self.audit)
        self.rotation = KeyRotation(
            index, keys, on_progress=self._rewrap_progress, batch=config.rewrap_batch, pause=config.rewrap_pause
        )
        metrics.watch_key_provider(keys)
        self.dek_pool = DekPool(keys) if keys.prefers_pooling and config.dek_pool else None
        self._background: set[asyncio.Task[Any]] = set()
        self._crypto_pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="seal")
        self._daemon_lock: int | None = None
        self.recovery: Any = None

    # construction --------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        config: Config,
        *,
        keys: KeyProvider | None = None,
        backend: BlobBackend | None = None,
        clock: Callable[[], datetime] = _now,
        daemon: bool = False,
    ) -> Vault:
        """Open the service. ``daemon=True`` takes the data directory's exclusive lock and runs
        start-up recovery (see ``vault.maintenance``)."""
        from vault import components  # late import: provider modules pull in optional clients

        metrics = Metrics()
        if keys is None:
            keys = await components.open_key_provider(config)
        if backend is None:
            backend = await components.open_backend(config)
        lock = _lock_data_dir(config) if daemon else None
        index = Index(
            config.index_dir, map_size=config.lmdb_map_size, on_commit=metrics.observe_commit,
            max_readers=config.lmdb_max_readers,
        )
        vault = cls(config, keys, backend, index, metrics, clock=clock)
        vault._daemon_lock = lock
        if daemon:
            # Only the daemon recovers: a CLI command running beside a live daemon must not
            # mistake that daemon's in-flight uploads for leftovers of a crash.
            from vault.maintenance import recover

            try:
                vault.recovery = await recover(vault)
            except Unavailable as exc:
                # Best effort: a blob store that is down for a moment must not keep the daemon
                # from starting (/readyz reports it); the next start or `gc` cleans up.
                log.warning("start-up recovery skipped: %s", exc.message)
        vault.metrics.records.set(vault.count_records())
        return vault

    def start_background(self) -> None:
        """Resume work that must survive restarts (an interrupted rewrap). Called by the daemon."""
        if self.rotation.job().state == "running":
            self._spawn(self.rotation.run())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)

        def finished(done: asyncio.Task[Any]) -> None:
            self._background.discard(done)
            if not done.cancelled() and done.exception() is not None:
                log.error("background job failed: %s", done.exception().__class__.__name__)

        task.add_done_callback(finished)

    async def stop_background(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _rewrap_progress(self, done: int, total: int) -> None:
        self.metrics.rewrap_progress.set(1.0 if total == 0 else done / total)

    async def close(self) -> None:
        await self.stop_background()
        if self.dek_pool is not None:
            await self.dek_pool.close()
        self.index.close()
        self.audit.close()
        await self.backend.close()
        await self.keys.close()
        self._crypto_pool.shutdown(wait=True)
        if self._daemon_lock is not None:
            os.close(self._daemon_lock)
            self._daemon_lock = None

    # keys ----------------------------------------------------------------------------------
    async def _tenant_index_key(self, tenant: str) -> bytes:
        """The tenant's blind-index key, created (and wrapped by the KEK) on first use."""
        cached = self._tenant_keys.get(tenant)
        if cached is not None:
            return cached
        lock = self._tenant_key_locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            if tenant in self._tenant_keys:
                return self._tenant_keys[tenant]
            key = tenant.encode()
            doc = self.index.read(lambda t: t.get_doc(schema.DB_TENANTS, key))
            if doc is None:
                fresh = secrets.token_bytes(32)
                wrapped = await self.keys.wrap_data_key(fresh)
                candidate = {"index_key": wrapped, "created_at": format_timestamp(self.clock())}

                def put_if_absent(txn: IndexTxn) -> dict[str, Any]:
                    existing = txn.get_doc(schema.DB_TENANTS, key)
                    if existing is not None:
                        return existing
                    txn.put_doc(schema.DB_TENANTS, key, candidate)
                    return candidate

                doc = await self.index.write(put_if_absent)
            index_key = await self.keys.unwrap_data_key(doc["index_key"])
            self._tenant_keys[tenant] = index_key
            return index_key

    async def _data_keys(
        self, record_ids: list[bytes], *, cache: bool = True, wrapped: dict[bytes, str] | None = None,
    ) -> dict[bytes, bytes]:
        """Unwrapped DEKs for records, through the cache; one batched KMS call for the misses.

        ``cache=False`` (scrub, export of a whole archive) neither reads nor fills the cache, so
        a sweep over every record does not evict the working set of interactive reads.
        ``wrapped``: the wrapped keys the caller read in the same transaction as the records
        (a search has them already), so the misses need no second trip to the index. The caller
        must not await between reading them and calling this: the cache's drop generation is
        noted here, and a shred in such a gap would not be seen.
        """
        found: dict[bytes, bytes] = {}
        missing: list[bytes] = []
        if cache:
            get = self.dek_cache.get
            for rid in record_ids:
                dek = get(rid)
                if dek is None:
                    missing.append(rid)
                else:
                    found[rid] = dek
            # Counted once per call, not per key: a timeline is 20 keys and labels() is a lock.
            if found:
                self.metrics.dek_cache.labels("hit").inc(len(found))
            if missing:
                self.metrics.dek_cache.labels("miss").inc(len(missing))
        else:
            missing = list(record_ids)
        if missing:
            if wrapped is not None and all(rid in wrapped for rid in missing):
                keys: list[str | None] = [wrapped[rid] for rid in missing]
            else:
                keys = self.index.read(lambda t: [t.get_dek(rid) for rid in missing])
            present = [(rid, w) for rid, w in zip(missing, keys) if w is not None]
            generation = self.dek_cache.generation  # see DekCache: a shred during the unwrap wins
            results = await self.keys.unwrap_data_keys([w for _, w in present])
            for (rid, _), result in zip(present, results):
                if isinstance(result, KeyMaterialError):
                    log.error("data key of record %s could not be unwrapped", encode_id(rid))
                    continue
                if cache:
                    self.dek_cache.put(rid, result, since=generation)
                found[rid] = result
        return found

    # records -------------------------------------------------------------------------------
    @staticmethod
    def _seal_personal(metadata_key: bytes, record_id: bytes, metadata: Metadata) -> bytes:
        # A fresh random nonce per seal: the same subkey seals every revision of the record.
        nonce = os.urandom(12)
        plaintext = json.dumps(metadata.personal(), separators=(",", ":")).encode()
        return nonce + AESGCM(metadata_key).encrypt(nonce, plaintext, _META_AAD + record_id)

    @staticmethod
    def _open_personal(metadata_key: bytes, record_id: bytes, sealed: bytes) -> dict[str, Any]:
        try:
            plaintext = AESGCM(metadata_key).decrypt(sealed[:12], sealed[12:], _META_AAD + record_id)
        except (InvalidTag, ValueError) as exc:
            raise BlobCorrupt("record metadata failed its integrity check") from exc
        return codec.loads(plaintext)

    def _to_record(self, stored: StoredRecord, dek: bytes | None, wrapped: str | None) -> Record:
        metadata = stored.metadata
        if dek is not None:
            personal = self._open_personal(derive_metadata_key(dek, stored.id), stored.id, stored.sealed)
            metadata = _with_personal(metadata, personal)
        return Record(
            id=encode_id(stored.id),
            tenant=stored.tenant,
            metadata=metadata,
            content_type=stored.content_type,
            size=stored.size,
            sha256=stored.sha256,
            created_at=stored.created_at,
            updated_at=stored.updated_at,
            retain_until=stored.retain_until,
            key_version=key_version_of(wrapped) if wrapped else 0,
            received_sha256=stored.received_sha256,
        )

    def _visible(self, principal: Principal, stored: StoredRecord | None) -> bool:
        if stored is None or stored.tenant != principal.tenant:
            return False
        if principal.role is Role.RESEARCHER and not stored.metadata.consent.research:
            return False
        return True

    def _load(self, principal: Principal, record_id: str) -> tuple[StoredRecord, str]:
        rid = decode_id(record_id)
        stored, wrapped = self.index.read(lambda t: (t.get_record(rid), t.get_dek(rid)))
        if not self._visible(principal, stored) or wrapped is None:
            raise NotFound()
        assert stored is not None
        return stored, wrapped

    async def _records_for(self, principal: Principal, stored: list[tuple[StoredRecord, str]]) -> list[Record]:
        if not principal.sees_personal_data:
            return [self._to_record(s, None, w) for s, w in stored]
        deks = await self._data_keys([s.id for s, _ in stored], wrapped={s.id: w for s, w in stored})
        out = []
        for s, w in stored:
            dek = deks.get(s.id)
            if dek is None:
                raise KeyMaterialError()
            out.append(self._to_record(s, dek, w))
        return out

    @audited(AuditAction.CREATE)
    async def create_image(
        self,
        principal: Principal,
        metadata: Metadata | Awaitable[Metadata],
        content_type: str,
        body: AsyncIterator[bytes],
    ) -> Record:
        """Store one image. ``metadata`` may be an awaitable that resolves once ``body`` is
        exhausted (a multipart upload whose file part came before its metadata part)."""
        principal.require(Action.UPLOAD)
        content_type = content_type.split(";")[0].strip().lower()
        if content_type not in self.config.allowed_content_types:
            raise UnsupportedMediaType(f"content type {content_type or '(none)'} is not allowed")
        if self._uploads >= self.config.max_concurrent_uploads:
            raise Overloaded(retry_after=1)
        self._uploads += 1
        self.metrics.uploads_in_flight.inc()
        try:
            return await self._create_image(principal, metadata, content_type, body)
        except ImageVaultError as exc:
            self.metrics.rejected_uploads.labels(exc.code).inc()
            raise
        finally:
            self._uploads -= 1
            self.metrics.uploads_in_flight.dec()

    async def _create_image(
        self, principal: Principal, metadata_in: Metadata | Awaitable[Metadata], content_type: str,
        body: AsyncIterator[bytes],
    ) -> Record:
        tenant = principal.tenant
        now = self.clock()
        rid = new_record_id(now.timestamp())
        rid_text = encode_id(rid)
        if self.dek_pool is not None:
            dek, wrapped_now = await self.dek_pool.take()
            wrap_task: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            wrap_task.set_result(wrapped_now)
        else:
            dek = secrets.token_bytes(32)
            # The KMS round trip overlaps with streaming the body.
            wrap_task = asyncio.ensure_future(self.keys.wrap_data_key(dek))
        writer = None
        committed = False
        try:
            index_key = await self._tenant_index_key(tenant)
            subkeys = derive_subkeys(dek, rid)
            sealer = BlobSealer(subkeys.blob, BlobHeader.new(rid))
            writer = await self.backend.open_writer(rid_text)
            await writer.write(sealer.header_bytes)
            # Metadata stripping (vault/ingest/strip.py) between the client and the sealer; the
            # size limit and the client's digest apply to the bytes as received.
            received = ReceivedStream(body, content_type, self.config.strip_metadata, self.config.max_image_bytes)
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
            await writer.commit()
            committed = True
            stamp = format_timestamp(now)
            stored = StoredRecord(
                id=rid,
                tenant=tenant,
                metadata=_without_personal(metadata),
                sealed=self._seal_personal(subkeys.metadata, rid, metadata),
                patient_hmac=schema.patient_hmac(index_key, metadata.patient_id),
                content_type=content_type,
                size=sealer.plaintext_size,
                sha256=digest,
                created_at=stamp,
                updated_at=stamp,
                retain_until=format_timestamp(self.retention.retain_until(metadata, tenant)),
                received_sha256=received_digest if received_digest != digest else None,
            )

            def insert(txn: IndexTxn) -> None:
                txn.put_dek(rid, wrapped)
                txn.put_record(stored)
                txn.bump_stats(tenant, 1, stored.size)

            await self.index.write(insert)
        except BaseException:
            if not wrap_task.done():
                wrap_task.cancel()
            if writer is not None:
                if committed:
                    await _quietly(self.backend.delete(rid_text))
                else:
                    await _quietly(writer.abort())
            raise
        self.metrics.bytes_stored.inc(stored.size)
        self.metrics.records.inc()
        self.dek_cache.put(rid, dek)
        return self._to_record(stored, dek, wrapped)

    async def _seal(
        self, sealer: BlobSealer, pieces: list[bytes], received: ReceivedStream, writer: BlobWriter
    ) -> None:
        """Hash, encrypt and (filesystem) write ``pieces`` in one crypto-thread job, off the
        event loop; hash the received bytes queued meanwhile (when stripping changed them) in
        the same job.

        Profiled under 16 concurrent uploads, SHA-256 alone took a quarter of the event loop's
        time (~1.4 GB/s per core against ~9 GB/s for AES-GCM) and the loop was saturated;
        with the received digest still on the loop, it was 27% of the loop. hashlib and
        AES-GCM release the GIL on large buffers, so on a thread they run beside the loop,
        which meanwhile parses other uploads. Writing in the same job saves a second thread
        hop per batch (thread wake-ups and GIL hand-offs were ~15% of the daemon's CPU).
        Same bytes, same order: the caller awaits each batch before sending the next, so one
        sealer and one writer are only ever used by one thread at a time. A dedicated pool,
        not the default executor: there, fsyncs of other uploads (blocking for milliseconds)
        would queue ahead of this CPU work.
        """
        sealed = await asyncio.get_running_loop().run_in_executor(
            self._crypto_pool, _seal_pieces, sealer, pieces, received, received.take_unhashed(), writer
        )
        if sealed:
            await writer.write(sealed)

    @audited(AuditAction.READ)
    async def get_record(self, principal: Principal, record_id: str) -> Record:
        principal.require(Action.READ)
        stored, wrapped = self._load(principal, record_id)
        return (await self._records_for(principal, [(stored, wrapped)]))[0]

    @audited(AuditAction.READ)
    async def open_image(self, principal: Principal, record_id: str) -> ImageHandle:
        principal.require(Action.READ)
        stored, wrapped = self._load(principal, record_id)
        deks = await self._data_keys([stored.id])
        dek = deks.get(stored.id)
        if dek is None:
            raise KeyMaterialError()
        record = self._to_record(stored, dek if principal.sees_personal_data else None, wrapped)
        return ImageHandle(record, self._blob_stream(principal, stored, dek))

    def _blob_stream(
        self, principal: Principal, stored: StoredRecord, dek: bytes
    ) -> Callable[[int, int], AsyncIterator[bytes]]:
        """Plaintext of a record's blob by range; integrity failures counted, logged, audited."""
        blob_key = derive_subkeys(dek, stored.id).blob
        rid_text = encode_id(stored.id)
        batch_chunks = max(1, self.backend.read_batch_bytes >> DEFAULT_CHUNK_EXP)

        async def stream(start: int, end: int) -> AsyncIterator[bytes]:
            try:
                async for piece in open_range(
                    self.backend, rid_text, blob_key, stored.id, start, end, expected_size=stored.size,
                    batch_chunks=batch_chunks,
                    executor=self._crypto_pool,  # blob reads off the event loop, one batch ahead
                ):
                    self.metrics.bytes_served.inc(len(piece))
                    yield piece
            except BlobCorrupt:
                self.metrics.integrity_errors.inc()
                log.error("integrity check failed for record %s", rid_text)
                await append_event(self.audit, principal, AuditAction.INTEGRITY_FAILURE, [rid_text], BlobCorrupt.code)
                raise
            except NotFound as exc:
                # Record present, blob missing: as bad as a corrupt blob, never an empty image.
                self.metrics.integrity_errors.inc()
                log.error("blob missing for record %s", rid_text)
                await append_event(self.audit, principal, AuditAction.INTEGRITY_FAILURE, [rid_text], BlobCorrupt.code)
                raise BlobCorrupt() from exc

        return stream

    @audited(AuditAction.UPDATE)
    async def update_metadata(self, principal: Principal, record_id: str, patch: Any) -> Record:
        principal.require(Action.UPDATE)
        if isinstance(patch, dict) and "patient_id" in patch:
            principal.require(Action.RECTIFY_PATIENT)
        if isinstance(patch, dict) and "legal_hold" in patch:
            principal.require(Action.LEGAL_HOLD)
        for _ in range(5):
            stored, wrapped = self._load(principal, record_id)
            dek = (await self._data_keys([stored.id])).get(stored.id)
            if dek is None:
                raise KeyMaterialError()
            subkeys = derive_subkeys(dek, stored.id)
            current = _with_personal(stored.metadata, self._open_personal(subkeys.metadata, stored.id, stored.sealed))
            updated = apply_patch(current, patch)
            index_key = await self._tenant_index_key(stored.tenant)
            new = stored.with_changes(
                metadata=_without_personal(updated),
                sealed=self._seal_personal(subkeys.metadata, stored.id, updated)
                if updated.personal() != current.personal() else stored.sealed,
                patient_hmac=schema.patient_hmac(index_key, updated.patient_id),
                updated_at=format_timestamp(self.clock()),
                retain_until=format_timestamp(self.retention.retain_until(updated, stored.tenant)),
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
                txn.put_record(new, latest)
                return True

            if await self.index.write(replace_if_unchanged):
                note_update(stored, new, patch)
                return self._to_record(new, dek if principal.sees_personal_data else None, wrapped)
        raise Conflict("record is being updated concurrently; retry")

    @audited(AuditAction.DELETE)
    async def shred_record(
        self, principal: Principal, record_id: str, *, reason: str | None = None, override: bool = False
    ) -> ShredResult:
        """Crypto-shred one record: key, record and index entries in one transaction, then the blob."""
        principal.require(Action.DELETE)
        if override:
            principal.require(Action.OVERRIDE_RETENTION)
        stored, _ = self._load(principal, record_id)
        # An override counts only with a reason; without one the retention rule applies as if
        # none was asked for (409 retention_obligation if the record is still retained).
        override = override and bool(reason and reason.strip())
        note(override=override, reason_hmac=reason_mac(await self._tenant_index_key(principal.tenant), reason))
        rule = ShredRule(self.clock(), principal.tenant, override_retention=override)
        (decision,) = await shred_records(self, [stored.id], rule)  # vault/retention/shredder.py
        if decision.code is not SHREDDED:
            raise refusal_error(decision.code)
        return ShredResult(encode_id(stored.id), True)

    # search --------------------------------------------------------------------------------
    @audited(AuditAction.SEARCH, describe=search_filters)
    async def search(self, principal: Principal, query: SearchQuery) -> SearchPage:
        principal.require(Action.SEARCH)
        tenant = principal.tenant
        if principal.role is Role.RESEARCHER:
            if query.patient_id is not None:
                # Pseudonymised access: a researcher must not link an identifier to records.
                raise Forbidden("researchers may not search by patient identifier")
            if query.consent not in (None, "research"):
                return SearchPage([], None)
            query = _replace_query(query, consent="research")
        if query.patient_id is not None:
            index_key = await self._tenant_index_key(tenant)
            db = schema.DB_BY_PATIENT
            prefix = schema.patient_prefix(tenant, schema.patient_hmac(index_key, query.patient_id))
        else:
            db = schema.DB_BY_FACET
            facets = query.facet_filters()
            # Most selective first: a lesion or session names a handful of records.
            for name in ("lesion_id", "session_id", "tag", "body_site", "modality", "consent"):
                if name in facets:
                    prefix = schema.facet_prefix(tenant, schema.SEARCH_FACETS[name], facets[name])
                    break
            else:
                prefix = schema.facet_prefix(tenant, schema.FACET_ALL)
        start = prefix + (schema.encode_time(query.captured_from) if query.captured_from else b"")
        if query.cursor is not None:
            start = max(start, prefix + query.cursor + b"\x00")
        stop = prefix + (schema.encode_time(query.captured_to) if query.captured_to else b"\xff" * 9)
        plen = len(prefix)
        limit = query.limit

        def collect(txn: IndexTxn) -> tuple[list[tuple[StoredRecord, str]], bytes | None]:
            found: list[tuple[StoredRecord, str]] = []
            last: bytes | None = None
            for key in txn.scan_keys(db, start, stop):
                tail = key[plen:]
                rid = tail[8:]
                stored = txn.get_record(rid)
                if stored is None or not _matches(stored, query):
                    continue
                if len(found) == limit:
                    return found, last  # there is at least one more match
                wrapped = txn.get_dek(rid)
                if wrapped is None:
                    continue
                found.append((stored, wrapped))
                last = tail
            return found, None

        found, last = self.index.read(collect)
        items = await self._records_for(principal, found)
        return SearchPage(items, encode_cursor(last) if last is not None else None)

    # tokens ------------------------------------------------------------------------------
    def authenticate(self, token: str | None) -> Principal:
        return self.tokens.authenticate(token)

    async def refuse_unless(self, principal: Principal, permission: Action, action: AuditAction) -> None:
        """403 before a request body is read, for a role that may not do this at all; the
        refusal is audited like any other (the body, which may hold a patient id, is not)."""
        if not principal.may(permission):
            await append_event(self.audit, principal, action, outcome=Forbidden.code)
            raise Forbidden()

    # keys administration -----------------------------------------------------------------
    @audited(AuditAction.KEY_STATUS, global_scope=True)
    async def key_report(self, principal: Principal) -> KeyReport:
        principal.require(Action.ADMIN)
        return await self.rotation.report()

    @audited(AuditAction.KEY_ROTATE, global_scope=True)
    async def rotate_keys(self, principal: Principal, *, background: bool = True) -> RewrapState:
        """New KEK version, then rewrap every stored DEK (in the background for the daemon)."""
        principal.require(Action.ADMIN)
        state = await self.rotation.rotate()
        if self.dek_pool is not None:
            self.dek_pool.clear()  # pre-wrapped keys are on the old version
        self.metrics.rewrap_progress.set(0.0)
        if background:
            self._spawn(self.rotation.run())
        return state

    @audited(AuditAction.KEY_RETIRE, global_scope=True)
    async def retire_keys(self, principal: Principal) -> KeyReport:
        principal.require(Action.ADMIN)
        await self.rotation.retire()
        return await self.rotation.report()

    # privacy operations (issue 4): entry points only; the logic is in vault/retention/,
    # vault/export.py and vault/audit/ ------------------------------------------------------
    @audited(AuditAction.ERASE)
    async def erase_patient(self, principal: Principal, request: ErasureRequest) -> _erasure.ErasureReport:
        """Shred every record of one patient; report refusals (legal hold, retention)."""
        return await _erasure.erase_patient(self, principal, request)

    @audited(AuditAction.LEGAL_HOLD)
    async def set_patient_hold(self, principal: Principal, request: HoldRequest) -> _erasure.HoldReport:
        return await _erasure.set_patient_hold(self, principal, request)

    @audited(AuditAction.EXPORT)
    async def export_patient(self, principal: Principal, request: ExportRequest) -> _export.PatientExport:
        """Prepare a subject access export; the caller streams ``chunks()`` of the zip."""
        return await _export.prepare_export(self, principal, request.patient_id)

    @audited(AuditAction.RETENTION_SWEEP, global_scope=True)
    async def sweep_retention(
        self, principal: Principal, *, dry_run: bool = False, progress: Callable[[int, int], None] | None = None,
    ) -> _sweeper.SweepReport:
        """Shred every record whose retention has ended and that is not on legal hold."""
        principal.require(Action.ADMIN)
        return await _sweeper.sweep(self, principal, dry_run=dry_run, progress=progress)

    @audited(AuditAction.AUDIT_READ)
    async def audit_entries(self, principal: Principal, *, after: int = 0, limit: int = 100) -> AuditPage:
        """Audit entries for an auditor: their tenant's and the global ones."""
        principal.require(Action.AUDIT)
        return self.audit.page(after, limit, frozenset({principal.tenant, GLOBAL_SCOPE}))

    @audited(AuditAction.AUDIT_VERIFY)
    async def verify_audit(self, principal: Principal) -> VerifyResult:
        principal.require(Action.AUDIT)
        return await asyncio.get_running_loop().run_in_executor(None, self.audit.verify)

    # operations ----------------------------------------------------------------------------
    async def collect_garbage(
        self,
        principal: Principal,
        *,
        min_age: timedelta = GC_MIN_AGE,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> GcResult:
        """Delete orphan blobs (a blob no record points at), and nothing else.

        Orphans are left by a crash between the blob commit and the index commit, and by a
        shred whose best-effort blob delete failed. Every committed blob is listed from the
        backend; those whose id has a record in the index are kept, whatever state the record
        is in. ``progress(scanned, None)`` is called as blobs are listed (the total is not
        known before the listing ends). Leftovers of interrupted writes are removed first
        (``cleanup_temporary``: temp files, stale multipart uploads).

        Why orphans younger than ``min_age`` are kept: the write path commits the blob
        *before* the index transaction (DESIGN.md), so every upload in flight, in this process
        or in another daemon on the same store, has a moment when its blob exists without a
        record; deleting it then would lose an acknowledged image. The blob id is the record
        id, whose first 48 bits are the time the upload *started* (ms), and a blob is
        committed at most one body transfer after that: an id older than ``min_age`` belongs
        to an upload that has long reached its index commit or failed. The default hour covers
        a 2 GiB image (the default limit) arriving at 1 MB/s in about 35 minutes. Ids in the
        future (a clock stepped back, a skewed peer) are kept too. Never lower ``min_age``
        below the longest upload while daemons are running.
        """
        principal.require(Action.ADMIN)
        if min_age < timedelta(0):
            raise ValueError("min_age must not be negative")
        oldest_ms = int((self.clock() - min_age).timestamp() * 1000)
        temporary = await self.backend.cleanup_temporary()
        scanned = removed = kept_recent = 0

        async def settle(blob_ids: list[str]) -> None:
            nonlocal removed, kept_recent
            raw_ids = [decode_id(blob_id) for blob_id in blob_ids]
            recorded = self.index.read(lambda t: [t.get_record(rid) is not None for rid in raw_ids])
            for blob_id, rid, has_record in zip(blob_ids, raw_ids, recorded):
                if has_record:
                    continue
                if int.from_bytes(rid[:6], "big") > oldest_ms:
                    kept_recent += 1
                    continue
                if await self.backend.delete(blob_id):
                    removed += 1
                    log.info("gc removed orphan blob %s", blob_id)

        batch: list[str] = []
        async for blob_id in self.backend.list_ids():
            batch.append(blob_id)
            scanned += 1
            if len(batch) == _GC_BATCH:
                await settle(batch)
                batch = []
                if progress is not None:
                    progress(scanned, None)
        if batch:
            await settle(batch)
        if progress is not None:
            progress(scanned, scanned)
        return GcResult(scanned, removed, kept_recent, temporary)

    def count_records(self) -> int:
        return self.index.read(lambda t: t.count(schema.DB_RECORDS))

    def stats(self, principal: Principal) -> dict[str, Any]:
        principal.require(Action.ADMIN)

        def gather(txn: IndexTxn) -> dict[str, Any]:
            tenants = {}
            total_records = total_bytes = 0
            for key, doc in txn.iter_docs(schema.DB_META):
                if key.startswith(b"stats:"):
                    tenants[key[6:].decode()] = doc
                    total_records += doc["records"]
                    total_bytes += doc["bytes"]
            return {"records": total_records, "bytes": total_bytes, "tenants": tenants}

        return self.index.read(gather)

    def info(self) -> dict[str, Any]:
        return {
            "name": "imagevault",
            "version": __version__,
            "api": "v1",
            "kms_provider": self.keys.name,
            "storage_backend": self.backend.name,
            "index": "lmdb",
            "max_image_bytes": self.config.max_image_bytes,
            "allowed_content_types": list(self.config.allowed_content_types),
            "strip_metadata": self.config.strip_metadata,
        }

    async def readiness(self) -> Readiness:
        checks: dict[str, str] = {}
        try:
            self.index.read(lambda t: t.get_doc(schema.DB_META, b"schema"))
            checks["index"] = "ok"
        except ImageVaultError as exc:
            checks["index"] = exc.message
        for part, probe in (("store", self.backend.check_writable), ("kms", self.keys.check)):
            try:
                await asyncio.wait_for(probe(), timeout=5)
                checks[part] = "ok"
            except ImageVaultError as exc:
                checks[part] = exc.message
            except asyncio.TimeoutError:
                checks[part] = "timed out"
        return Readiness(all(v == "ok" for v in checks.values()), checks)


def _lock_data_dir(config: Config) -> int:
    """One daemon per data directory: a second one would race recovery and group commits."""
    import fcntl

    config.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(config.data_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise IndexUnavailable("another imagevault daemon is serving this data directory") from exc
    return fd


def _seal_pieces(
    sealer: BlobSealer, pieces: list[bytes], received: ReceivedStream, unhashed: list[bytes], writer: BlobWriter
) -> bytes | None:
    """Runs on a crypto thread (see ``Vault._seal``). Writes the sealed batch itself when the
    writer can write from a thread; otherwise returns it, as bytes, for an async write."""
    received.hash_received(unhashed)
    if not pieces:
        return None
    sealed = sealer.update_many(pieces)
    if not sealed:
        return None
    if writer.supports_blocking_write:
        writer.write_blocking(sealed)
        return None
    return bytes(sealed)


def _matches(stored: StoredRecord, query: SearchQuery) -> bool:
    meta = stored.metadata
    if query.lesion_id is not None and meta.lesion_id != query.lesion_id:
        return False
    if query.session_id is not None and meta.session_id != query.session_id:
        return False
    if query.modality is not None and meta.modality != query.modality:
        return False
    if query.body_site is not None and meta.body_site != query.body_site:
        return False
    if query.tag is not None and query.tag not in meta.tags:
        return False
    if query.consent is not None and not meta.consent.allows(query.consent):
        return False
    return True


def _replace_query(query: SearchQuery, **changes: Any) -> SearchQuery:
    return replace(query, **changes)


def _without_personal(metadata: Metadata) -> Metadata:
    return replace(metadata, patient_id="", description=None, diagnosis=None)


def _with_personal(metadata: Metadata, personal: dict[str, Any]) -> Metadata:
    # What dataclasses.replace would return, without re-running __init__ over all fifteen fields
    # (5 µs a record, a tenth of a timeline search): a copy of the instance dict with the three
    # personal fields set. Metadata has no __post_init__, so no validation is skipped.
    merged = object.__new__(Metadata)
    fields = merged.__dict__
    fields.update(metadata.__dict__)
    fields["patient_id"] = personal.get("patient_id")
    fields["description"] = personal.get("description")
    fields["diagnosis"] = personal.get("diagnosis")
    return merged


async def _quietly(awaitable: Any) -> None:
    """Best-effort cleanup: never let a cleanup failure mask the original error."""
    try:
        await awaitable
    except Exception:  # noqa: BLE001
        log.warning("cleanup step failed", exc_info=False)
