"""The LMDB index: the only module that imports ``lmdb``.

One environment with named databases (``vault.index.schema``); the same machinery also serves
the audit trail's separate environment (``vault.audit.store`` passes its own ``databases``).
LMDB allows one writer at a time and every durable commit costs an fsync, so writes are
*group-committed*: callers submit small functions; a single writer thread drains everything
queued, runs each in its own nested transaction (so one failing operation is rolled back
alone), and commits them all with one fsync. Short reads (a record, a token) run inline on the
caller's thread; long ones (search walks) go through ``read_off_loop`` onto a small pool of
reader threads, so the event loop keeps serving meanwhile. Either way one read is one
transaction, begun, used and ended on one thread: py-lmdb opens environments with
``MDB_NOTLS``, which ties a reader slot to the transaction rather than to the thread, but a
transaction and its cursors must still never be shared between threads.

When the map is full the batch is aborted, the map doubled and the batch retried, instead of
failing: growing requires that no transaction of this process is open, so readers hold a shared
lock and the resize takes it exclusively for the instant it needs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from vault import codec
from vault.errors import ImageVaultError, IndexTampered, IndexUnavailable, InsufficientStorage
from vault.index import schema
from vault.index.integrity import IndexSeal, record_body
from vault.index.records import StoredRecord
from vault.index.uploads import UploadState

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 1024
# Reader threads for long reads. Few: each walk is bounded (the search scan budget), so a queue
# of walks waits a little rather than occupying reader slots and cores the writer needs.
READ_THREADS = 4


class _SharedExclusiveLock:
    """Many readers or one resizer; the resizer waits for readers to leave."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._exclusive = False

    def acquire_shared(self) -> None:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._readers:
                self._cond.wait()

    def release_exclusive(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()


def _translate(exc: lmdb.Error) -> ImageVaultError:
    if isinstance(exc, lmdb.ReadersFullError):
        return IndexUnavailable("index has too many concurrent readers", retry_after=1)
    text = str(exc)
    if "No space left" in text or "ENOSPC" in text:
        return InsufficientStorage("no space left for the index")
    return IndexUnavailable("index error")


class IndexTxn:
    """Typed operations over one LMDB transaction. Valid only inside the callback that got it."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[bytes, Any], seal: IndexSeal | None = None) -> None:
        self._txn = txn
        self._dbs = dbs
        self._seal = seal

    @property
    def seal(self) -> IndexSeal:
        """The index integrity key; writing a record or token without it is a programming error
        (the service always opens it, ``vault.services.integrity``)."""
        if self._seal is None:
            raise RuntimeError("index opened without its integrity key")
        return self._seal

    # records and their index entries
    def get_record(self, record_id: bytes) -> StoredRecord | None:
        """The record, authenticated (``IndexTampered`` if its MAC fails). Without an integrity
        key (offline tools and tests only) the value is decoded unchecked."""
        raw = self._txn.get(record_id, db=self._dbs[schema.DB_RECORDS])
        if raw is None:
            return None
        raw = bytes(raw)
        body = self._seal.open_record(record_id, raw) if self._seal is not None else record_body(raw)
        return StoredRecord.from_bytes(record_id, body)

    def put_record(self, record: StoredRecord, previous: StoredRecord | None = None) -> None:
        old = set(previous.index_entries()) if previous is not None else set()
        new = set(record.index_entries())
        value = self.seal.seal_record(record.id, record.to_bytes())
        for db, key in old - new:
            self._txn.delete(key, db=self._dbs[db])
        for db, key in new - old:
            self._txn.put(key, b"", db=self._dbs[db])
        self._txn.put(record.id, value, db=self._dbs[schema.DB_RECORDS])

    def has_record(self, record_id: bytes) -> bool:
        return self._txn.get(record_id, db=self._dbs[schema.DB_RECORDS]) is not None

    def put_record_value(self, record_id: bytes, value: bytes) -> None:
        """Store an already sealed record value as it is (the integrity upgrade)."""
        self._txn.put(record_id, value, db=self._dbs[schema.DB_RECORDS])

    def delete_record(self, record: StoredRecord) -> None:
        for db, key in record.index_entries():
            self._txn.delete(key, db=self._dbs[db])
        self._txn.delete(record.id, db=self._dbs[schema.DB_RECORDS])
        self._txn.delete(record.id, db=self._dbs[schema.DB_DEKS])
        self._txn.delete(schema.rendition_job_key(record.id), db=self._dbs[schema.DB_JOBS])

    def move_patient(self, tenant: str, old: bytes, new: bytes) -> int:
        """Move every record of one patient from HMAC ``old`` to ``new`` (a shred epoch re-keying
        the tenant's blind index): its ``by_patient`` entries and the HMAC inside each record,
        the only two places it is written. How many records moved."""
        db = self._dbs[schema.DB_BY_PATIENT]
        records = self._dbs[schema.DB_RECORDS]
        old_prefix = schema.patient_prefix(tenant, old)
        new_prefix = schema.patient_prefix(tenant, new)
        keys = list(self.scan_keys(schema.DB_BY_PATIENT, old_prefix, old_prefix + b"\xff" * (schema.SUFFIX_LEN + 1)))
        moved = 0
        seal = self.seal
        for key in keys:
            rid = schema.record_id_of(key)
            raw = self._txn.get(rid, db=records)
            if raw is None:
                continue
            try:
                # Checked before it is sealed again: a re-key must not launder a tampered record
                # (left where it is, under a key about to be destroyed: unfindable, not forged).
                body = seal.open_record(rid, bytes(raw))
            except IndexTampered:
                continue
            updated = StoredRecord.with_patient_hmac_bytes(body, old, new)
            if updated is None:
                continue
            self._txn.put(rid, seal.seal_record(rid, updated), db=records)
            self._txn.delete(key, db=db)
            self._txn.put(new_prefix + key[len(old_prefix):], b"", db=db)
            moved += 1
        return moved

    # resumable uploads (vault/index/uploads.py)
    def get_upload(self, upload_id: bytes) -> UploadState | None:
        """The upload's state, authenticated (``IndexTampered`` if its MAC fails)."""
        raw = self._txn.get(upload_id, db=self._dbs[schema.DB_UPLOADS])
        if raw is None:
            return None
        return UploadState.from_bytes(upload_id, self.seal.open_upload(upload_id, bytes(raw)))

    def put_upload(self, state: UploadState) -> None:
        self._txn.put(state.id, self.seal.seal_upload(state.id, state.to_bytes()), db=self._dbs[schema.DB_UPLOADS])

    def delete_upload(self, upload_id: bytes) -> None:
        self._txn.delete(upload_id, db=self._dbs[schema.DB_UPLOADS])

    def iter_upload_ids(self) -> Iterator[bytes]:
        cursor = self._txn.cursor(db=self._dbs[schema.DB_UPLOADS])
        for raw in cursor.iternext(keys=True, values=False):
            yield bytes(raw)

    def staged_blob_ids(self) -> frozenset[str]:
        """Every blob id an upload state lists: live staged data, which recovery and gc keep.
        A state that fails its MAC is skipped (its segments are then orphans like any other)."""
        ids: set[str] = set()
        for upload_id in self.iter_upload_ids():
            try:
                state = self.get_upload(upload_id)
            except IndexTampered:
                continue
            if state is not None:
                ids.update(s.blob_id for s in state.segments)
        return frozenset(ids)

    def get_dek(self, record_id: bytes) -> str | None:
        raw = self._txn.get(record_id, db=self._dbs[schema.DB_DEKS])
        return None if raw is None else bytes(raw).decode()

    def put_dek(self, record_id: bytes, wrapped: str) -> None:
        self._txn.put(record_id, wrapped.encode(), db=self._dbs[schema.DB_DEKS])

    def iter_deks(self, after: bytes | None = None) -> Iterator[tuple[bytes, str]]:
        cursor = self._txn.cursor(db=self._dbs[schema.DB_DEKS])
        found = cursor.set_range(after + b"\x00" if after is not None else b"")
        while found:
            yield bytes(cursor.key()), bytes(cursor.value()).decode()
            found = cursor.next()

    def iter_record_ids(self) -> Iterator[bytes]:
        cursor = self._txn.cursor(db=self._dbs[schema.DB_RECORDS])
        for raw in cursor.iternext(keys=True, values=False):
            yield bytes(raw)

    def scan_keys(self, db: bytes, start: bytes, stop: bytes) -> Iterator[bytes]:
        """Keys k with start <= k < stop, in order."""
        cursor = self._txn.cursor(db=self._dbs[db])
        if not cursor.set_range(start):
            return
        for raw in cursor.iternext(keys=True, values=False):
            key = bytes(raw)
            if key >= stop:
                return
            yield key

    def prefix_cursor(self, db: bytes, prefix: bytes, stop: bytes) -> PrefixCursor:
        """A forward-only cursor over the keys ``prefix || rest`` with ``rest < stop``."""
        return PrefixCursor(self._txn.cursor(db=self._dbs[db]), prefix, stop)

    def count(self, db: bytes) -> int:
        return int(self._txn.stat(self._dbs[db])["entries"])

    # small JSON documents: tokens, tenants, jobs, meta
    def get_doc(self, db: bytes, key: bytes) -> dict[str, Any] | None:
        raw = self._txn.get(key, db=self._dbs[db])
        return None if raw is None else codec.loads(raw)

    def put_doc(self, db: bytes, key: bytes, doc: dict[str, Any]) -> None:
        self._txn.put(key, json.dumps(doc, separators=(",", ":"), sort_keys=True).encode(), db=self._dbs[db])

    def delete_key(self, db: bytes, key: bytes) -> bool:
        return bool(self._txn.delete(key, db=self._dbs[db]))

    def bump_stats(self, tenant: str, records: int, size: int) -> None:
        """Adjust the per-tenant record and byte counts (``meta`` ``stats:<tenant>``)."""
        key = schema.stats_key(tenant)
        doc = self.get_doc(schema.DB_META, key) or {"records": 0, "bytes": 0}
        doc["records"] += records
        doc["bytes"] += size
        self.put_doc(schema.DB_META, key, doc)

    def iter_docs(self, db: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
        cursor = self._txn.cursor(db=self._dbs[db])
        for key, value in cursor:
            yield bytes(key), codec.loads(value)

    def put_marker(self, db: bytes, key: bytes) -> None:
        self._txn.put(key, b"", db=self._dbs[db])

    # raw values (the audit chain stores its own binary encoding)
    def get_bytes(self, db: bytes, key: bytes) -> bytes | None:
        raw = self._txn.get(key, db=self._dbs[db])
        return None if raw is None else bytes(raw)

    def put_bytes(self, db: bytes, key: bytes, value: bytes, *, append: bool = False) -> None:
        """``append=True``: the caller guarantees ``key`` sorts after every existing key."""
        if not self._txn.put(key, value, db=self._dbs[db], append=append):
            raise ValueError("append of a key that does not sort last")

    def scan_items(self, db: bytes, start: bytes, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with start <= key < stop (no stop: to the end), in order."""
        cursor = self._txn.cursor(db=self._dbs[db])
        if not cursor.set_range(start):
            return
        for raw_key, raw_value in cursor.iternext(keys=True, values=True):
            key = bytes(raw_key)
            if stop is not None and key >= stop:
                return
            yield key, bytes(raw_value)


class PrefixCursor:
    """The keys under one prefix, by their remainder after it, visited in order by seeking forward.

    ``seek(target)`` answers the smallest remainder ``>= target`` (and ``< stop``), or None once
    there is none. Every key it lands on counts in ``landed``: the index entries a walk has
    visited, the unit of the search scan budget. Seeking to where it already is, or behind,
    costs nothing; to the key right after the current one it steps instead of searching.
    """

    __slots__ = ("_cursor", "_done", "_key", "_prefix", "_stop", "landed")

    def __init__(self, cursor: lmdb.Cursor, prefix: bytes, stop: bytes) -> None:
        self._cursor = cursor
        self._prefix = prefix
        # Keys under a prefix end in fixed-width remainders, so every key below prefix || stop
        # that sorts after prefix || target starts with prefix.
        self._stop = prefix + stop
        self._key: bytes | None = None
        self._done = False
        self.landed = 0

    def seek(self, target: bytes) -> bytes | None:
        if self._done:
            return None
        wanted = self._prefix + target
        key = self._key
        if key is not None and key >= wanted:
            return key[len(self._prefix):]
        if key is not None and wanted == key + b"\x00":
            found = self._cursor.next()
        else:
            found = self._cursor.set_range(wanted)
        if not found:
            self._done = True
            return None
        key = bytes(self._cursor.key())
        if key >= self._stop:
            self._done = True
            return None
        self._key = key
        self.landed += 1
        return key[len(self._prefix):]


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[IndexTxn], Any], future: concurrent.futures.Future[Any]) -> None:
        self.fn = fn
        self.future = future


class Index:
    """The LMDB environment, its group-committing writer thread and inline readers."""

    def __init__(
        self,
        path: Path,
        *,
        map_size: int = 1 << 30,
        on_commit: Callable[[float, int], None] | None = None,
        readonly: bool = False,
        max_readers: int = 256,
        databases: tuple[bytes, ...] = schema.ALL_DBS,
    ) -> None:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        try:
            self._env = lmdb.open(
                str(path), map_size=map_size, max_dbs=len(databases) + 2, subdir=True,
                sync=True, metasync=True, readahead=False, max_readers=max_readers, mode=0o600,
                readonly=readonly,
            )
            self._dbs = {name: self._env.open_db(name, create=not readonly) for name in databases}
        except lmdb.Error as exc:
            raise IndexUnavailable(f"cannot open index: {exc.__class__.__name__}") from exc
        self._lock = _SharedExclusiveLock()
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed = False
        self._reader_pool: ThreadPoolExecutor | None = None
        self._off_loop_lock = threading.Lock()
        self.reads_off_loop = 0  # reads running on reader threads right now
        self.commits = 0
        self.grows = 0
        # The index integrity key, set by the service once unwrapped (vault.services.integrity).
        self.seal: IndexSeal | None = None
        if not readonly and schema.DB_META in self._dbs:
            self.write_sync(self._init_schema)

    @staticmethod
    def _init_schema(txn: IndexTxn) -> None:
        if txn.get_doc(schema.DB_META, schema.META_SCHEMA) is None:
            txn.put_doc(schema.DB_META, schema.META_SCHEMA, {"version": schema.SCHEMA_VERSION})

    @property
    def map_size(self) -> int:
        return int(self._env.info()["map_size"])

    def map_usage(self) -> tuple[int, int]:
        """(bytes of the map in use: pages up to the highest one written, map size). Cheap: two
        reads of the environment's header, no transaction."""
        info = self._env.info()
        return (int(info["last_pgno"]) + 1) * int(self._env.stat()["psize"]), int(info["map_size"])

    # reads
    def read(self, fn: Callable[[IndexTxn], T]) -> T:
        """Run ``fn`` in a read transaction on the calling thread. Keep ``fn`` short."""
        for _ in range(3):
            self._lock.acquire_shared()
            try:
                with self._env.begin(buffers=True) as txn:
                    return fn(IndexTxn(txn, self._dbs, self.seal))
            except lmdb.MapResizedError:
                pass  # another process grew the map; adopt its size below and retry
            except lmdb.Error as exc:
                raise _translate(exc) from exc
            finally:
                self._lock.release_shared()
            self._adopt_foreign_resize()
        raise IndexUnavailable("index map keeps changing size")

    async def read_off_loop(self, fn: Callable[[IndexTxn], T]) -> T:
        """``read`` on a reader thread: for walks that may visit thousands of entries."""
        if self._closed:
            raise IndexUnavailable("index is closed")
        if self._reader_pool is None:
            self._reader_pool = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="lmdb-read")
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, self._counted_read, fn)

    def _counted_read(self, fn: Callable[[IndexTxn], T]) -> T:
        with self._off_loop_lock:
            self.reads_off_loop += 1
        try:
            return self.read(fn)
        finally:
            with self._off_loop_lock:
                self.reads_off_loop -= 1

    # writes
    async def write(self, fn: Callable[[IndexTxn], T]) -> T:
        """Run ``fn`` in the next group commit; returns once its commit is durable."""
        return await asyncio.wrap_future(self.submit(fn))

    def write_sync(self, fn: Callable[[IndexTxn], T]) -> T:
        """Blocking variant for the CLI and start-up."""
        return self.submit(fn).result()

    def submit(self, fn: Callable[[IndexTxn], T]) -> concurrent.futures.Future[T]:
        if self._closed:
            raise IndexUnavailable("index is closed")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._ensure_writer()
        self._queue.put(_Job(fn, future))
        return future

    @property
    def pending_writes(self) -> int:
        """Writes queued for the next group commit (approximate: the queue is live)."""
        return self._queue.qsize()

    def _ensure_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._writer_loop, name="lmdb-writer", daemon=True)
            self._writer.start()

    def _writer_loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._commit_batch(batch)
            if stop:
                return

    def _commit_batch(self, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        for _ in range(64):
            results: list[tuple[bool, Any]] = []
            started = time.perf_counter()
            try:
                with self._env.begin(write=True) as txn:
                    for job in live:
                        child = self._env.begin(write=True, parent=txn)
                        try:
                            value = job.fn(IndexTxn(child, self._dbs, self.seal))
                        except lmdb.MapFullError:
                            child.abort()
                            raise
                        except BaseException as exc:  # noqa: BLE001 - handed to the caller
                            child.abort()
                            results.append((False, exc))
                        else:
                            child.commit()
                            results.append((True, value))
            except lmdb.MapFullError:
                self._grow()
                continue
            except lmdb.MapResizedError:
                self._adopt_foreign_resize()
                continue
            except lmdb.Error as exc:
                error = _translate(exc)
                for job in live:
                    job.future.set_exception(error)
                return
            self.commits += 1
            if self._on_commit is not None:
                self._on_commit(time.perf_counter() - started, len(live))
            for job, (ok, value) in zip(live, results):
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)
            return
        for job in live:
            job.future.set_exception(IndexUnavailable("index could not grow"))

    def _grow(self) -> None:
        self._lock.acquire_exclusive()
        try:
            new_size = self.map_size * 2
            self._env.set_mapsize(new_size)
            self.grows += 1
            log.info("index map grown to %d MiB", new_size >> 20)
        finally:
            self._lock.release_exclusive()

    def _adopt_foreign_resize(self) -> None:
        self._lock.acquire_exclusive()
        try:
            self._env.set_mapsize(0)
        finally:
            self._lock.release_exclusive()

    def clear_stale_readers(self) -> int:
        """Free the reader slots of processes that died inside a read (a killed worker): a
        stale slot pins old pages, and the map would grow instead of reusing them."""
        try:
            return int(self._env.reader_check())
        except lmdb.Error as exc:
            raise _translate(exc) from exc

    def copy_to(self, path: Path, *, compact: bool = True) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._env.copy(str(path), compact=compact)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader_pool is not None:
            self._reader_pool.shutdown(wait=True)  # no transaction may outlive the environment
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
        self._env.close()
