"""Thumbnails and previews in the background: one persisted job per record, a bounded pool of
decoder processes, sealed results in the blob store.

Life of a job (docs/design.md, "Renditions"):

1. The upload's index transaction writes the record's job (``jobs`` ``rendition/<ID>``) as
   ``queued``, or ``unavailable`` for a type we do not render (DICOM, meshes): a crash after the
   201 loses no job, and the 201 waits for nothing more than that one small put.
2. A worker takes queued jobs in upload order (keys sort by record id), after any upload in
   flight has had its share (``YIELD_FACTOR``): decrypt the original → decode, orient, resize,
   encode in a decoder process (``vault.ingest.renditions``, with time and memory bounds) →
   seal each rendition under a key derived from the record's DEK → store ``<ID>.t`` and
   ``<ID>.p`` → mark the job ``ready`` with each rendition's etag and size, in a transaction
   that checks the record still exists (else the new blobs are deleted again).
3. A job whose image does not decode, or is too large, is marked ``failed`` with a reason code
   and counted (``imagevault_rendition_failures_total{reason}``); it is never retried. A
   transient failure (store or KMS unavailable) is retried ``MAX_ATTEMPTS`` times, then fails.
4. At start-up every ``queued`` job is loaded again: a restart resumes the backlog.

Shredding deletes the job with the record (``IndexTxn.delete_record``) and the rendition blobs
with the original (``Shredder.delete_blobs``); the keys die with the DEK in any case.

The job state is not sealed with the index integrity key: it decides nothing about access
(visibility is the record's, checked first), and a forged ``ready`` only leads to a blob read
that fails authentication under the record's own key.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from vault.audit.hooks import note
from vault.auth import Principal
from vault.errors import (
    BlobCorrupt, IndexTampered, KeyMaterialError, NotFound, RenditionPending, RenditionUnavailable,
    Unavailable,
)
from vault.ids import encode_id
from vault.index import schema
from vault.index.engine import IndexTxn
from vault.index.rendition_jobs import (
    FAILED, QUEUED, READY, UNAVAILABLE, RenditionInfo, RenditionState, get_state, put_state,
)
from vault.index.records import StoredRecord
from vault.ingest.renditions import (
    KINDS, REASON_MEMORY, REASON_TIMEOUT, REASON_TOO_LARGE, REASON_UNDECODABLE, REASON_UNSUPPORTED, RenditionFailed,
    RenditionLimits, Renditions, limit_decoder_process, looks_like, render, renderable,
)
from vault.services.context import ServiceContext
from vault.services.reading import RecordReader
from vault.store.backends.base import rendition_blob_id
from vault.store.format import derive_rendition_key, derive_subkeys, sealed_size
from vault.store.sealer import open_range, open_under, seal_under

log = logging.getLogger(__name__)

# Attempts of a job that fails for a transient reason (store or KMS down) before it fails for good.
MAX_ATTEMPTS = 3
RETRY_DELAY = 10.0  # seconds before such a job is tried again
# While uploads are in flight a worker waits this many times as long as its last job took, so
# rendition work takes at most a third of the time it shares with uploads (as key rewrapping).
YIELD_FACTOR = 2.0
# What a client is told to wait for a queued rendition (Retry-After, seconds).
PENDING_RETRY_AFTER = 2


def initial_state(content_type: str) -> RenditionState:
    """The job an upload writes with its record."""
    if renderable(content_type):
        return RenditionState(QUEUED)
    return RenditionState(UNAVAILABLE, REASON_UNSUPPORTED)


@dataclass(frozen=True)
class BackfillReport:
    queued_now: int  # records that had no job before
    processed: int  # jobs worked on by this run
    ready: int  # of all records, once it ended
    failed: int
    unavailable: int
    still_queued: int  # transient failures waiting for a retry

    def to_json(self) -> dict[str, int]:
        return {"queued_now": self.queued_now, "processed": self.processed, "ready": self.ready,
                "failed": self.failed, "unavailable": self.unavailable, "still_queued": self.still_queued}


@dataclass(frozen=True)
class RenditionHandle:
    """A rendition ready to serve: its bytes (WebP, no metadata) and their etag."""

    record_id: str
    kind: str
    etag: str
    size: int
    data: bytes = b""
    content_type: str = "image/webp"


class _Transient(Exception):
    """A job that may succeed later (the store or the KMS was unavailable)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RenditionService:
    def __init__(self, context: ServiceContext, reader: RecordReader, busy: Any = lambda: False) -> None:
        self._context = context
        self._reader = reader
        self._busy = busy
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued: set[bytes] = set()
        self._wake: asyncio.Event | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._in_progress = 0
        config = context.config
        self._limits = RenditionLimits(max_pixels=config.rendition_max_pixels)

    # the queue -------------------------------------------------------------------------------
    def load_backlog(self) -> int:
        """Queue every job left ``queued`` in the index (start-up: a restart resumes them)."""
        prefix = schema.RENDITION_JOB_PREFIX

        def queued(txn: IndexTxn) -> list[bytes]:
            return [key[len(prefix):] for key, raw in txn.scan_items(schema.DB_JOBS, prefix, prefix + b"\xff")
                    if b'"queued"' in raw]

        ids = self._context.index.read(queued)
        for rid in ids:
            self.enqueue(rid)
        return len(ids)

    def enqueue(self, record_id: bytes) -> None:
        if record_id in self._queued:
            return
        self._queued.add(record_id)
        self._queue.append(record_id)
        self._context.metrics.rendition_backlog.set(len(self._queue) + self._in_progress)
        if self._wake is not None:
            self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._queue) + self._in_progress

    def _take(self) -> bytes | None:
        if not self._queue:
            return None
        rid = self._queue.popleft()
        self._queued.discard(rid)
        self._in_progress += 1
        return rid

    async def run(self) -> None:
        """One worker: take queued jobs until cancelled (the daemon runs ``rendition_workers``)."""
        if self._wake is None:
            self._wake = asyncio.Event()
        while True:
            rid = self._take()
            if rid is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            started = time.perf_counter()
            try:
                await self._process(rid)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one job's bug must not stop the worker
                log.exception("rendition job for record %s crashed; it stays queued until a restart", encode_id(rid))
            finally:
                self._in_progress -= 1
                self._context.metrics.rendition_backlog.set(self.backlog)
            if self._busy():
                await asyncio.sleep(YIELD_FACTOR * (time.perf_counter() - started))

    async def drain(self) -> int:
        """Work through the queue in this task until it is empty (tests, the backfill command);
        returns how many jobs were taken."""
        done = 0
        while (rid := self._take()) is not None:
            try:
                await self._process(rid)
            finally:
                self._in_progress -= 1
                self._context.metrics.rendition_backlog.set(self.backlog)
            done += 1
        return done

    async def backfill(self, progress: Any = None) -> BackfillReport:
        """Give every record without a job one (``queued``, or ``unavailable`` for formats not
        rendered), then work through every queued job here. Resumable: the jobs are in the
        index, so an interrupted backfill (or the daemon) picks up what is left."""
        context = self._context
        prefix = schema.RENDITION_JOB_PREFIX

        def missing(txn: IndexTxn) -> list[tuple[bytes, str]]:
            out = []
            for rid in txn.iter_record_ids():
                if txn.get_doc(schema.DB_JOBS, prefix + rid) is None:
                    record = txn.get_record(rid)
                    if record is not None:
                        out.append((rid, record.content_type))
            return out

        absent = context.index.read(missing)
        for start in range(0, len(absent), 256):
            batch = absent[start:start + 256]

            def put(txn: IndexTxn, batch: list[tuple[bytes, str]] = batch) -> None:
                for rid, content_type in batch:
                    if txn.has_record(rid) and get_state(txn, rid) is None:
                        put_state(txn, rid, initial_state(content_type))

            await context.index.write(put)
        self.load_backlog()
        total = self.backlog
        done = 0
        while (rid := self._take()) is not None:
            try:
                await self._process(rid)
            finally:
                self._in_progress -= 1
                context.metrics.rendition_backlog.set(self.backlog)
            done += 1
            if progress is not None:
                progress(done, total)
        states = context.index.read(lambda t: [RenditionState.from_json(doc) for _, doc in (
            (k, t.get_doc(schema.DB_JOBS, k)) for k in t.scan_keys(schema.DB_JOBS, prefix, prefix + b"\xff"))
            if doc is not None])
        counts = collections.Counter(s.state for s in states)
        return BackfillReport(queued_now=len(absent), processed=done, ready=counts[READY], failed=counts[FAILED],
                              unavailable=counts[UNAVAILABLE], still_queued=counts[QUEUED])

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)

    # one job ---------------------------------------------------------------------------------
    async def _process(self, rid: bytes) -> None:
        context = self._context
        started = time.perf_counter()
        try:
            stored = context.index.read(lambda t: t.get_record(rid) if t.has_record(rid) else None)
            state = context.index.read(lambda t: get_state(t, rid))
        except IndexTampered:
            await self._finish(rid, RenditionState(FAILED, IndexTampered.code))
            return
        if stored is None or state is None or state.state != QUEUED:
            return  # shredded meanwhile, or settled by another worker
        try:
            renditions, dek = await self._make(stored)
            await self._store(stored, dek, renditions)
        except RenditionFailed as exc:
            outcome = UNAVAILABLE if exc.reason == REASON_UNSUPPORTED else FAILED
            await self._finish(rid, RenditionState(outcome, exc.reason, state.attempts + 1))
            return
        except _Transient as exc:
            attempts = state.attempts + 1
            if attempts >= MAX_ATTEMPTS:
                await self._finish(rid, RenditionState(FAILED, exc.reason, attempts))
            else:
                retry = RenditionState(QUEUED, exc.reason, attempts)
                await context.index.write(lambda t: put_state(t, rid, retry))
                asyncio.get_running_loop().call_later(RETRY_DELAY, self.enqueue, rid)
            return
        context.metrics.renditions_made.inc()
        context.metrics.rendition_seconds.observe(time.perf_counter() - started)

    async def _finish(self, rid: bytes, state: RenditionState) -> None:
        def settle(txn: IndexTxn) -> None:
            if txn.has_record(rid):
                put_state(txn, rid, state)

        await self._context.index.write(settle)
        if state.state == FAILED:
            self._context.metrics.rendition_failures.labels(state.reason or "unknown").inc()
            log.info("rendition job for record %s failed: %s", encode_id(rid), state.reason)

    async def _make(self, stored: StoredRecord) -> tuple[Renditions, bytes]:
        context = self._context
        if not renderable(stored.content_type):
            raise RenditionFailed(REASON_UNSUPPORTED)
        if stored.size > context.config.rendition_max_bytes:
            raise RenditionFailed(REASON_TOO_LARGE)
        try:
            dek = await context.data_keys.unwrap_one(stored.id)
            blob_key = derive_subkeys(dek, stored.id).blob
            pieces = [piece async for piece in open_range(
                context.backend, encode_id(stored.id), blob_key, stored.id, 0, stored.size,
                expected_size=stored.size, executor=context.crypto_pool,
            )]
        except (BlobCorrupt, NotFound):
            raise RenditionFailed(BlobCorrupt.code) from None
        except KeyMaterialError:
            raise RenditionFailed(KeyMaterialError.code) from None
        except Unavailable as exc:
            raise _Transient(exc.code) from exc
        data = b"".join(pieces)
        del pieces
        if not looks_like(stored.content_type, data[:16]):
            raise RenditionFailed(REASON_UNDECODABLE)
        return await self._decode(data, stored.content_type), dek

    async def _decode(self, data: bytes, content_type: str) -> Renditions:
        """``render`` in a decoder process, bounded in time (the process is killed past it) and
        in memory (its address space is capped)."""
        config = self._context.config
        pool = self._decoder_pool()
        future = pool.submit(render, data, content_type, self._limits)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), config.rendition_timeout)
        except TimeoutError:
            self._kill_pool(pool)
            raise RenditionFailed(REASON_TIMEOUT) from None
        except BrokenProcessPool:
            if self._pool is not pool:
                raise _Transient("decoder_restarted") from None  # killed for another job's timeout
            self._kill_pool(pool)
            raise RenditionFailed(REASON_MEMORY) from None  # the decoder died (the kernel's OOM killer)

    def _decoder_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            config = self._context.config
            # spawn, not fork: the daemon has threads (LMDB writer, executors) a fork would copy
            # mid-flight, and a decoder needs nothing of the daemon's memory (keys least of all).
            self._pool = ProcessPoolExecutor(
                max_workers=max(1, config.rendition_workers), mp_context=multiprocessing.get_context("spawn"),
                initializer=limit_decoder_process, initargs=(config.rendition_memory,),
            )
        return self._pool

    def _kill_pool(self, pool: ProcessPoolExecutor) -> None:
        """A decoder cannot be interrupted from inside: its processes are killed and the pool is
        made again for the next job."""
        if self._pool is pool:
            self._pool = None
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    async def _store(self, stored: StoredRecord, dek: bytes, renditions: Renditions) -> None:
        context = self._context
        rid, rid_text = stored.id, encode_id(stored.id)

        def seal() -> dict[str, bytes]:
            return {kind: seal_under(derive_rendition_key(dek, rid, kind), rid, renditions.of(kind)) for kind in KINDS}

        sealed = await asyncio.get_running_loop().run_in_executor(context.crypto_pool, seal)
        names = {kind: rendition_blob_id(rid_text, kind) for kind in KINDS}
        try:
            for kind in KINDS:
                await context.backend.delete(names[kind])  # a leftover of an interrupted job
                writer = await context.backend.open_writer(names[kind])
                try:
                    await writer.write(sealed[kind])
                    await writer.commit()
                except BaseException:
                    await writer.abort()
                    raise
        except Unavailable as exc:
            raise _Transient(exc.code) from exc
        ready = RenditionState(READY, thumbnail=_info(renditions.thumbnail), preview=_info(renditions.preview))

        def mark(txn: IndexTxn) -> bool:
            if not txn.has_record(rid):
                return False
            put_state(txn, rid, ready)
            return True

        if not await context.index.write(mark):
            for name in names.values():  # shredded while we worked: nothing of it may stay
                await context.backend.delete(name)

    # reads -----------------------------------------------------------------------------------
    def state_of(self, record_id: bytes) -> RenditionState | None:
        return self._context.index.read(lambda t: get_state(t, record_id))

    async def open(self, principal: Principal, record_id: str, kind: str, *, with_data: bool = True) -> RenditionHandle:
        """A record's rendition for a caller who may see the record (a researcher: only of a
        research-consented one). ``RenditionPending`` while its job waits, ``RenditionUnavailable``
        when there will be none."""
        context = self._context
        note(rendition=kind)
        stored, _ = self._reader.load(principal, record_id)
        state = self.state_of(stored.id)
        if state is None:
            # A record stored before renditions existed (or restored without its job): queued now.
            state = initial_state(stored.content_type)
            await context.index.write(lambda t: put_state(t, stored.id, state) if t.has_record(stored.id) else None)
            if state.state == QUEUED:
                self.enqueue(stored.id)
        if state.state == QUEUED:
            raise RenditionPending(retry_after=PENDING_RETRY_AFTER)
        info = state.info(kind)
        if state.state != READY or info is None:
            raise RenditionUnavailable(f"this image has no {kind} ({state.reason or 'not renderable'})")
        if not with_data:
            return RenditionHandle(record_id, kind, info.etag, info.size)
        dek = await context.data_keys.unwrap_one(stored.id)
        name = rendition_blob_id(encode_id(stored.id), kind)
        try:
            blob = await context.backend.read(name, 0, sealed_size(info.size))
            data = await asyncio.get_running_loop().run_in_executor(
                context.crypto_pool, open_under, derive_rendition_key(dek, stored.id, kind), stored.id, blob,
            )
        except (NotFound, BlobCorrupt):
            # Lost (a restore from backup does not copy renditions) or damaged: counted, and
            # made again; the caller is told to come back.
            context.metrics.integrity_errors.inc()
            log.error("rendition %s of record %s missing or corrupt; queued again", kind, encode_id(stored.id))
            await context.index.write(lambda t: put_state(t, stored.id, RenditionState(QUEUED))
                                      if t.has_record(stored.id) else None)
            self.enqueue(stored.id)
            raise RenditionPending(retry_after=PENDING_RETRY_AFTER) from None
        context.metrics.bytes_served.inc(len(data))
        return RenditionHandle(record_id, kind, info.etag, info.size, data)


def _info(data: bytes) -> RenditionInfo:
    return RenditionInfo(hashlib.sha256(data).hexdigest()[:32], len(data))

