"""The LMDB index engine (``vault.index.engine``): the only module that imports ``lmdb``.

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
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from vault.errors import ImageVaultError, IndexUnavailable, InsufficientStorage
from vault.index import schema
from vault.index.engine import IndexTxn
from vault.index.integrity import IndexSeal

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


class LmdbTxn(IndexTxn):
    """The engine primitives over one LMDB transaction."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[bytes, Any], seal: IndexSeal | None = None) -> None:
        super().__init__(seal)
        self._txn = txn
        self._dbs = dbs

    def _get(self, db: bytes, key: bytes) -> bytes | None:
        raw = self._txn.get(key, db=self._dbs[db])
        return None if raw is None else bytes(raw)

    def _put(self, db: bytes, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[db])

    def _delete(self, db: bytes, key: bytes) -> bool:
        return bool(self._txn.delete(key, db=self._dbs[db]))

    def _append(self, db: bytes, key: bytes, value: bytes) -> None:
        if not self._txn.put(key, value, db=self._dbs[db], append=True):
            raise ValueError("append of a key that does not sort last")

    def _scan(self, db: bytes, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        cursor = self._txn.cursor(db=self._dbs[db])
        if not cursor.set_range(start):
            return
        for raw_key, raw_value in cursor.iternext(keys=True, values=True):
            key = bytes(raw_key)
            if stop is not None and key >= stop:
                return
            yield key, bytes(raw_value)

    def _scan_keys(self, db: bytes, start: bytes, stop: bytes | None) -> Iterator[bytes]:
        cursor = self._txn.cursor(db=self._dbs[db])
        if not cursor.set_range(start):
            return
        for raw in cursor.iternext(keys=True, values=False):
            key = bytes(raw)
            if stop is not None and key >= stop:
                return
            yield key

    def prefix_cursor(self, db: bytes, prefix: bytes, stop: bytes,
                      attach: Sequence[tuple[bytes, bytes]] = ()) -> PrefixCursor:
        return PrefixCursor(self._txn.cursor(db=self._dbs[db]), prefix, stop)

    def count(self, db: bytes) -> int:
        return int(self._txn.stat(self._dbs[db])["entries"])

    def lock(self, db: bytes, key: bytes) -> None:
        """Nothing to do: LMDB runs one write transaction at a time, across processes too."""


class PrefixCursor:
    """``vault.index.engine.KeyCursor`` on an LMDB cursor: seeking to the key right after the
    current one steps instead of searching."""

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

    engine = "lmdb"

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

    def databases(self) -> tuple[bytes, ...]:
        return tuple(self._dbs)

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
                    return fn(LmdbTxn(txn, self._dbs, self.seal))
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
                            value = job.fn(LmdbTxn(child, self._dbs, self.seal))
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

    def watch_key_changes(self, read: object, on_change: object, *, initial: int = 0) -> None:
        """None: reading the key generation is a read of the memory map, cheap on every use."""

    def job_locks(self) -> None:
        """None: one host serves an LMDB index, and per-host file locks elect its jobs."""

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
