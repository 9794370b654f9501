"""The PostgreSQL index engine (``vault.index.engine``): the only module that imports ``psycopg``.

The same ordered key -> value model as LMDB, so several daemons can share one index: each
named database is the rows of one table with its name in ``db`` (``index_kv`` for the index,
``audit_kv`` for the audit trail), ``key bytea`` and ``value bytea`` holding exactly the bytes
LMDB would (blinded keys, sealed values). Nothing personal reaches a table or a query
parameter that PostgreSQL could log: the same bytes that the LMDB files hold, as hex.

Reads see one snapshot (like an LMDB read transaction), on a connection from a small pool, in
as few round trips as that allows: a read of one statement runs in autocommit (one statement is
a snapshot of its own: no BEGIN, no COMMIT); one that turns out to need more is run again from
the start in a ``REPEATABLE READ READ ONLY`` transaction in pipeline mode, its BEGIN sent with
its first query and its COMMIT with the closing sync. ``prefetch`` reads keys of several
databases in one statement. Range scans and prefix cursors fetch keys in batches
(``SCAN_BATCH`` per query) and seek inside the batch they hold, so a search walk costs one
round trip per batch, not per key; a cursor with ``attach`` also reads, in that statement, the
record-id-keyed values the walk will read for each key (a timeline: one statement in all).

Writes keep LMDB's shape: one writer thread per process drains the queue and runs a whole batch
of write functions in one transaction (a savepoint each, so one failing function is rolled back
alone) with one commit; a batch of one runs in pipeline mode (``PgIndex._run_one``). The index's writer transactions are ``SERIALIZABLE``: when two daemons
touch the same keys, PostgreSQL fails one with a serialization failure, and the batch is rolled
back and run again from the start on fresh data, so no update is lost. That is why write
functions must be pure functions of their transaction. The audit trail's writer runs at
``READ COMMITTED`` and serialises its appends explicitly instead (``IndexTxn.lock`` on the head:
an advisory transaction lock, after which reads see the latest committed head), so concurrent
appends from several daemons queue behind each other rather than failing and retrying.

A lost database surfaces as ``IndexUnavailable`` (503 ``index_unavailable`` with Retry-After);
broken connections are dropped and new ones made on the next use, so the daemon recovers by
itself when PostgreSQL is back.

Schema migrations are the SQL files in ``vault/index/migrations`` (``NNNN_name.sql``), applied
in order by ``migrate`` (``imagevault init``, ``imagevault index upgrade``), each in its own
transaction with its row in ``schema_version``.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import hashlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from vault.errors import ImageVaultError, IndexUnavailable
from vault.index import schema
from vault.index.engine import IndexTxn
from vault.index.integrity import IndexSeal

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 1024
READ_THREADS = 4
SCAN_BATCH = 256
# Keys per fetch of a cursor that reads attached values with them (three values a key for a
# search): a patient's whole timeline in one statement, without reading hundreds of records
# that a page of 50 leaves unread.
ATTACHED_BATCH = 64
MAX_PENDING = 2048  # queued puts sent at once at the latest
MAX_CONFLICT_RETRIES = 50
RETRY_AFTER = 2  # seconds a client is asked to wait while the database is unreachable
DOWN_BACKOFF = 0.5  # seconds between connection attempts of the read pool while they fail
INDEX_TABLE = "index_kv"
AUDIT_TABLE = "audit_kv"
APPLICATION_NAME = "imagevault"  # in pg_stat_activity: how `index copy` sees a running daemon
APPEND_NOT_LAST = "append of a key that does not sort last"
SNAPSHOT_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x696D6167_65766C74  # advisory lock key held while migrations run ("imagevlt")


class _Conflict(BaseException):
    """A serialization failure or deadlock: the batch is rolled back and run again. A
    BaseException so that no ``except Exception`` in a write function can swallow it."""


class _ConnectionLost(BaseException):
    """The connection broke mid-transaction."""


class _NeedSnapshot(BaseException):
    """A read begun in single-statement mode asked for a second statement: it is run again from
    the start in a snapshot transaction. A BaseException for the same reason as ``_Conflict``."""


def _abandon(conn: psycopg.Connection[Any]) -> None:
    """Roll back whatever transaction a failed read or write left open on ``conn``, so the
    connection goes back to its pool idle; a broken connection is left for the pool to drop."""
    if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")


def _unavailable(what: str = "index database unavailable") -> IndexUnavailable:
    return IndexUnavailable(what, retry_after=RETRY_AFTER)


# migrations ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration file, in version order."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found.append(Migration(int(path.name[:4]), path.stem[5:], path.read_text(encoding="utf-8")))
    return found


LATEST_VERSION = max(m.version for m in migrations())


def connect(dsn: str, *, timeout: float = 3.0, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection, or ``IndexUnavailable`` (never an error text that could quote the DSN)."""
    try:
        # libpq's connect_timeout is whole seconds, at least 2.
        return psycopg.connect(dsn, connect_timeout=max(2, int(timeout + 0.999)), autocommit=autocommit,
                               application_name=APPLICATION_NAME)
    except psycopg.Error as exc:
        raise _unavailable() from exc


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The last migration applied to the database (0: none, an empty database)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(dsn: str, *, target: int | None = None, timeout: float = 3.0) -> tuple[int, int]:
    """Apply the migrations after the database's version up to ``target`` (default: all), each
    in its own transaction; concurrent callers (daemons starting together) queue on an advisory
    lock. Returns (version before, version after)."""
    target = LATEST_VERSION if target is None else target
    with connect(dsn, timeout=timeout) as conn:
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            before = schema_version(conn)
            if before > LATEST_VERSION:
                raise IndexUnavailable(f"index database schema {before} is newer than this program's {LATEST_VERSION}")
            for migration in migrations():
                if before < migration.version <= target:
                    with conn.transaction():
                        conn.execute(migration.sql.encode())
                        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (migration.version,))
                    log.info("index database migrated to version %d (%s)", migration.version, migration.name)
            return before, schema_version(conn)
        except psycopg.Error as exc:
            raise _unavailable("index database migration failed") from exc


def other_sessions(dsn: str, *, timeout: float = 3.0) -> int:
    """How many other imagevault connections the database has (a daemon serving it)."""
    with connect(dsn, timeout=timeout) as conn:
        try:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND application_name = %s", (APPLICATION_NAME,)).fetchone()
        except psycopg.Error as exc:
            raise _unavailable() from exc
        return int(row[0]) if row else 0


def database_version(dsn: str, *, timeout: float = 3.0) -> int:
    with connect(dsn, timeout=timeout) as conn:
        try:
            return schema_version(conn)
        except psycopg.Error as exc:
            raise _unavailable() from exc


# connections -----------------------------------------------------------------------------------
class _Pool:
    """At most ``size`` connections for reads; broken ones are closed and replaced on demand."""

    def __init__(self, dsn: str, size: int, timeout: float) -> None:
        self._dsn = dsn
        self._size = size
        self._timeout = timeout
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False
        self._down_until = 0.0  # monotonic time before which no new connection is tried

    def _new(self) -> psycopg.Connection[Any]:
        # Reads run on the event loop's thread: while the database is unreachable, try to
        # connect at most once per DOWN_BACKOFF and fail the others at once, so a partition
        # (a connect that waits for its timeout) cannot stall every request behind it.
        if time.monotonic() < self._down_until:
            raise _unavailable()
        try:
            conn = connect(self._dsn, timeout=self._timeout)
        except IndexUnavailable:
            self._down_until = time.monotonic() + DOWN_BACKOFF
            raise
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            # Single-statement reads run in autocommit, outside any BEGIN ... READ ONLY: the
            # session default keeps them read-only too.
            conn.execute("SET default_transaction_read_only = on")
        except psycopg.Error as exc:
            conn.close()
            raise _unavailable() from exc
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._slots.acquire(timeout=self._timeout):
            raise _unavailable("index database connections exhausted")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._new()
            healthy = False
            try:
                yield conn
                healthy = True
            finally:
                reusable = (healthy or not conn.broken) and not conn.closed \
                    and conn.info.transaction_status == TransactionStatus.IDLE
                with self._lock:
                    if reusable and not self._closed:
                        self._idle.append(conn)
                        conn = None
                if conn is not None:
                    conn.close()
        finally:
            self._slots.release()

    def discard_idle(self) -> None:
        """After a lost connection the idle ones are most likely dead too (a restarted server)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.discard_idle()


# transactions ----------------------------------------------------------------------------------
def _lock_id(table: str, db: bytes, key: bytes) -> int:
    digest = hashlib.blake2b(table.encode() + b"\x00" + db + b"\x00" + key, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PgTxn(IndexTxn):
    """The engine primitives over one PostgreSQL transaction."""

    def __init__(self, conn: psycopg.Connection[Any], table: str, seal: IndexSeal | None) -> None:
        super().__init__(seal)
        self._conn = conn
        self._table = table
        self._pending: list[tuple[str, tuple[Any, ...]]] = []  # puts not sent yet (``flush``)
        self._sql_get = f"SELECT value FROM {table} WHERE db = %s AND key = %b"
        self._sql_get_many = f"SELECT key, value FROM {table} WHERE db = %s AND key = ANY(%b)"
        self._sql_put = (f"INSERT INTO {table} (db, key, value) VALUES (%s, %b, %b) "
                         "ON CONFLICT (db, key) DO UPDATE SET value = EXCLUDED.value")
        self._sql_insert = (f"INSERT INTO {table} (db, key, value) VALUES (%s, %b, %b) "
                            "ON CONFLICT (db, key) DO NOTHING RETURNING 1")
        self._sql_append = f"INSERT INTO {table} (db, key, value) VALUES (%s, %b, %b)"
        self._sql_delete = f"DELETE FROM {table} WHERE db = %s AND key = %b RETURNING 1"
        self._sql_scan = f"SELECT key, value FROM {table} WHERE db = %s AND key >= %b AND key < %b ORDER BY key LIMIT %s"
        self._sql_scan_open = f"SELECT key, value FROM {table} WHERE db = %s AND key >= %b ORDER BY key LIMIT %s"
        self._sql_keys = f"SELECT key FROM {table} WHERE db = %s AND key >= %b AND key < %b ORDER BY key LIMIT %s"
        self._sql_keys_open = f"SELECT key FROM {table} WHERE db = %s AND key >= %b ORDER BY key LIMIT %s"
        # Keys under a prefix, each joined to the values of record id-keyed databases (``attach``).
        self._sql_keys_attached = (
            f"SELECT k.key, w.db, w.prefix, a.value FROM "
            f"(SELECT key FROM {table} WHERE db = %s AND key >= %b AND key < %b ORDER BY key LIMIT %s) k "
            "CROSS JOIN unnest(%s::text[], %b::bytea[]) AS w(db, prefix) "
            f"LEFT JOIN {table} a ON a.db = w.db AND a.key = w.prefix || substring(k.key FROM octet_length(k.key) - %s + 1) "
            "ORDER BY k.key")
        self._sql_get_pairs = (f"SELECT t.db, t.key, t.value FROM {table} t "
                               "JOIN unnest(%s::text[], %b::bytea[]) AS w(db, key) ON t.db = w.db AND t.key = w.key")
        # Values read ahead by ``prefetch``, by (db, key); None: known absent. Writes through
        # this transaction drop what they change.
        self._known: dict[tuple[bytes, bytes], bytes | None] = {}
        # A read in single-statement mode (``PgIndex.read``): statements run in autocommit, and
        # a second one means the read needs a snapshot after all (``_NeedSnapshot``).
        self.single = False
        self.statements = 0
        self.waited = 0  # statements whose results came back
        self.pipelined = False  # a write in pipeline mode: statements are sent before their results come

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Run one statement and fetch its rows (inside the error mapping: in pipeline mode a
        statement's error arrives with its results)."""
        self.flush()  # every statement sees the writes queued before it
        if self.single and self.statements:
            raise _NeedSnapshot()
        self.statements += 1
        try:
            rows = self._conn.execute(sql, params, binary=True).fetchall()
            self.waited += 1
            return rows
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
            raise _Conflict() from exc
        except psycopg.OperationalError as exc:
            raise _ConnectionLost() from exc

    def _send(self, sql: str, params: tuple[Any, ...]) -> None:
        """Run a statement whose result nobody reads (a lock, a notification): in pipeline mode
        it goes out with the next statement that is waited for."""
        self.flush()
        if self.single and self.statements:
            raise _NeedSnapshot()
        self.statements += 1
        try:
            self._conn.execute(sql, params, binary=True)
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
            raise _Conflict() from exc
        except psycopg.OperationalError as exc:
            raise _ConnectionLost() from exc

    def flush(self) -> None:
        """Send the queued puts: consecutive ones of one statement as one ``executemany``,
        which psycopg pipelines (one round trip for an upload's dozen index entries, not one
        each). Runs before any other statement and before the transaction or savepoint ends."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            with self._conn.cursor(binary=True) as cursor:
                start = 0
                while start < len(pending):
                    sql = pending[start][0]
                    end = start
                    while end < len(pending) and pending[end][0] is sql:
                        end += 1
                    cursor.executemany(sql, [params for _, params in pending[start:end]])
                    start = end
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
            raise _Conflict() from exc
        except psycopg.OperationalError as exc:
            raise _ConnectionLost() from exc

    def discard(self) -> None:
        """Forget the queued puts (their savepoint or transaction was rolled back)."""
        self._pending.clear()

    def _get(self, db: bytes, key: bytes) -> bytes | None:
        if (db, key) in self._known:
            return self._known[(db, key)]
        rows = self._rows(self._sql_get, (db.decode(), key))
        return bytes(rows[0][0]) if rows else None

    def get_many(self, db: bytes, keys: list[bytes]) -> list[bytes | None]:
        known = self._known
        if all((db, key) in known for key in keys):
            return [known[(db, key)] for key in keys]
        if len(keys) < 2:
            return [self._get(db, key) for key in keys]
        rows = self._rows(self._sql_get_many, (db.decode(), keys))
        found = {bytes(k): bytes(v) for k, v in rows}
        return [found.get(key) for key in keys]

    def prefetch(self, wanted: list[tuple[bytes, bytes]]) -> None:
        """Read the values of several (db, key) pairs, of any databases, in one statement."""
        missing = [pair for pair in dict.fromkeys(wanted) if pair not in self._known]
        if not missing:
            return
        rows = self._rows(self._sql_get_pairs, ([db.decode() for db, _ in missing], [key for _, key in missing]))
        for db, key in missing:
            self._known[(db, key)] = None
        for db, key, value in rows:
            self._known[(db.encode(), bytes(key))] = bytes(value)

    def _put(self, db: bytes, key: bytes, value: bytes) -> None:
        self._known.pop((db, key), None)
        self._pending.append((self._sql_put, (db.decode(), key, value)))
        if len(self._pending) >= MAX_PENDING:
            self.flush()

    def _delete(self, db: bytes, key: bytes) -> bool:
        self._known.pop((db, key), None)
        return bool(self._rows(self._sql_delete, (db.decode(), key)))

    def _append(self, db: bytes, key: bytes, value: bytes) -> None:
        # Callers hold the lock that makes ``key`` the next one (the audit head), so a
        # duplicate is the only way it can fail to sort last. ON CONFLICT rather than a
        # savepoint around a failing insert: one round trip, not three.
        self._known.pop((db, key), None)
        if self.pipelined:
            # Its result is not waited for: a duplicate fails the statement, and the sync before
            # COMMIT reports it as the job's failure (``PgIndex._run_one``).
            self._send(self._sql_append, (db.decode(), key, value))
        elif not self._rows(self._sql_insert, (db.decode(), key, value)):
            raise ValueError(APPEND_NOT_LAST)

    def fetch(self, db: bytes, start: bytes, stop: bytes | None, limit: int, *, values: bool) -> list[Any]:
        """Up to ``limit`` rows (key, value) or keys with start <= key < stop, in order."""
        name = db.decode()
        if values:
            if stop is None:
                rows = self._rows(self._sql_scan_open, (name, start, limit))
            else:
                rows = self._rows(self._sql_scan, (name, start, stop, limit))
            return [(bytes(k), bytes(v)) for k, v in rows]
        if stop is None:
            rows = self._rows(self._sql_keys_open, (name, start, limit))
        else:
            rows = self._rows(self._sql_keys, (name, start, stop, limit))
        return [bytes(r[0]) for r in rows]

    def _scan(self, db: bytes, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        while True:
            rows = self.fetch(db, start, stop, SCAN_BATCH, values=True)
            yield from rows
            if len(rows) < SCAN_BATCH:
                return
            start = rows[-1][0] + b"\x00"

    def _scan_keys(self, db: bytes, start: bytes, stop: bytes | None) -> Iterator[bytes]:
        while True:
            keys = self.fetch(db, start, stop, SCAN_BATCH, values=False)
            yield from keys
            if len(keys) < SCAN_BATCH:
                return
            start = keys[-1] + b"\x00"

    def count(self, db: bytes) -> int:
        rows = self._rows(f"SELECT count(*) FROM {self._table} WHERE db = %s", (db.decode(),))
        return int(rows[0][0]) if rows else 0

    def prefix_cursor(self, db: bytes, prefix: bytes, stop: bytes,
                      attach: Sequence[tuple[bytes, bytes]] = ()) -> PgKeyCursor:
        return PgKeyCursor(self, db, prefix, stop, tuple(attach))

    def fetch_attached(self, db: bytes, start: bytes, stop: bytes, limit: int,
                       attach: tuple[tuple[bytes, bytes], ...]) -> list[bytes]:
        """Up to ``limit`` keys with start <= key < stop, in order, and in the same statement
        the values ``attach`` names for each (kept for this transaction's reads of them)."""
        rows = self._rows(self._sql_keys_attached, (
            db.decode(), start, stop, limit, [a_db.decode() for a_db, _ in attach], [prefix for _, prefix in attach],
            schema.ID_LEN))
        keys: list[bytes] = []
        known = self._known
        for key, a_db, a_prefix, value in rows:
            key = bytes(key)
            if not keys or keys[-1] != key:
                keys.append(key)
            known[(a_db.encode(), bytes(a_prefix) + key[-schema.ID_LEN:])] = None if value is None else bytes(value)
        return keys

    def notify_key_change(self, generation: int) -> None:
        self._send("SELECT pg_notify(%s, %s)", (KEY_CHANNEL, str(generation)))

    def lock(self, db: bytes, key: bytes) -> None:
        self._send("SELECT pg_advisory_xact_lock(%s)", (_lock_id(self._table, db, key),))


class PgKeyCursor:
    """``vault.index.engine.KeyCursor`` over batches of keys: a seek inside the batch held is a
    binary search, one beyond it fetches the next batch from there."""

    __slots__ = ("_attach", "_batch", "_db", "_done", "_exhausted", "_from", "_key", "_prefix", "_stop", "_txn",
                 "landed")

    def __init__(self, txn: PgTxn, db: bytes, prefix: bytes, stop: bytes,
                 attach: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self._txn = txn
        self._attach = attach
        self._db = db
        self._prefix = prefix
        self._stop = prefix + stop
        # Every key from ``_from`` up to the batch's last key (to the stop once exhausted).
        self._batch: list[bytes] = []
        self._from: bytes | None = None
        self._exhausted = False  # the batch reaches the stop: nothing after its last key
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
        found = self._in_batch(wanted)
        if found is None and not self._done:
            self._fetch(wanted)
            found = self._in_batch(wanted)
        if found is None:
            self._done = True
            return None
        self._key = found
        self.landed += 1
        return found[len(self._prefix):]

    def _in_batch(self, wanted: bytes) -> bytes | None:
        """The first key >= ``wanted`` if the batch answers that (else None, also when the
        answer is "none": ``_done`` is then decided by ``_exhausted``)."""
        batch = self._batch
        if self._from is None or wanted < self._from:
            return None
        at = bisect.bisect_left(batch, wanted)
        if at < len(batch):
            return batch[at]
        if self._exhausted:
            self._done = True
        return None

    def _fetch(self, start: bytes) -> None:
        if self._attach:
            batch = ATTACHED_BATCH
            keys = self._txn.fetch_attached(self._db, start, self._stop, batch, self._attach)
        else:
            batch = SCAN_BATCH
            keys = self._txn.fetch(self._db, start, self._stop, batch, values=False)
        self._batch = keys
        self._from = start
        self._exhausted = len(keys) < batch
        if not keys:
            self._done = True


# the engine ------------------------------------------------------------------------------------
class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[IndexTxn], Any], future: concurrent.futures.Future[Any]) -> None:
        self.fn = fn
        self.future = future


class PgIndex:
    """One namespace (table) of a PostgreSQL index: a read pool, reader threads for long reads
    and a group-committing writer thread with its own connection."""

    engine = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        table: str = INDEX_TABLE,
        databases: tuple[bytes, ...] = schema.ALL_DBS,
        serialise: bool = True,
        pool_size: int = 8,
        connect_timeout: float = 3.0,
        on_commit: Callable[[float, int], None] | None = None,
        readonly: bool = False,
    ) -> None:
        if table not in (INDEX_TABLE, AUDIT_TABLE):
            raise ValueError(f"unknown index table {table!r}")
        self._dsn = dsn
        self._table = table
        self._databases = databases
        # SERIALIZABLE: conflicts are detected and retried; READ COMMITTED: callers lock.
        self._isolation = psycopg.IsolationLevel.SERIALIZABLE if serialise else psycopg.IsolationLevel.READ_COMMITTED
        self._begin = f"BEGIN ISOLATION LEVEL {self._isolation.name.replace('_', ' ')}"
        self._timeout = connect_timeout
        self._pool = _Pool(dsn, pool_size, connect_timeout)
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._reader_pool: ThreadPoolExecutor | None = None
        self._off_loop_lock = threading.Lock()
        self._watches: list[PgKeyWatch] = []
        self.reads_off_loop = 0
        self.commits = 0
        self.conflicts = 0  # batches run again after a serialization failure
        self._committing = False  # the writer's batch has run; its COMMIT is under way
        self.seal: IndexSeal | None = None
        version = database_version(dsn, timeout=connect_timeout)
        if version != LATEST_VERSION:
            raise IndexUnavailable(
                f"index database schema is version {version}, this program needs {LATEST_VERSION}: "
                "run `imagevault index upgrade`" if version else
                "index database has no schema: run `imagevault init` (or `imagevault index upgrade`)",
                retry_after=60,
            )
        if not readonly and schema.DB_META in databases:
            self.write_sync(self._init_schema)

    @staticmethod
    def _init_schema(txn: IndexTxn) -> None:
        if txn.get_doc(schema.DB_META, schema.META_SCHEMA) is None:
            txn.put_doc(schema.DB_META, schema.META_SCHEMA, {"version": schema.SCHEMA_VERSION})

    def databases(self) -> tuple[bytes, ...]:
        return self._databases

    def map_usage(self) -> None:
        return None

    def watch_key_changes(self, read: Callable[[], int], on_change: Callable[[int], None], *,
                          initial: int = 0) -> PgKeyWatch:
        watch = PgKeyWatch(self._dsn, read, on_change, initial=initial, connect_timeout=self._timeout)
        self._watches.append(watch)
        return watch

    def job_locks(self) -> PgJobLocks:
        return PgJobLocks(self._dsn, connect_timeout=self._timeout)

    def clear_stale_readers(self) -> int:
        # The server ends a dead client's session and its snapshot with it.
        return 0

    # reads
    def read(self, fn: Callable[[IndexTxn], T]) -> T:
        """Run ``fn`` on one consistent snapshot on the calling thread.

        Most reads are one statement (a document, a record with its key read together by
        ``prefetch``), and one statement is a snapshot of its own: ``fn`` first runs in
        autocommit, one round trip, no BEGIN or COMMIT. Should it issue a second statement, it
        is stopped there and run again from the start in a snapshot transaction
        (``_snapshot_read``), so what it returns always comes from one snapshot. (Read
        functions may be run again: a lost connection retries them too.)"""
        return self._read(fn, single=True)

    def _read(self, fn: Callable[[IndexTxn], T], *, single: bool) -> T:
        if self._closed:
            raise IndexUnavailable("index is closed")
        for attempt in range(2):
            try:
                with self._pool.connection() as conn:
                    if single:
                        txn = PgTxn(conn, self._table, self.seal)
                        txn.single = True
                        try:
                            return fn(txn)
                        except _NeedSnapshot:
                            pass
                    return self._snapshot_read(conn, fn)
            except (_ConnectionLost, psycopg.OperationalError) as exc:
                # A dead pooled connection (the server restarted): once more on a fresh one.
                self._pool.discard_idle()
                if attempt:
                    raise _unavailable() from exc
            except _Conflict as exc:  # not expected of a read-only snapshot; retry once
                if attempt:
                    raise _unavailable("index database busy") from exc
            except psycopg.Error as exc:
                raise IndexUnavailable("index database error") from exc
        raise _unavailable()

    def _snapshot_read(self, conn: psycopg.Connection[Any], fn: Callable[[IndexTxn], T]) -> T:
        """``fn`` in a ``REPEATABLE READ READ ONLY`` transaction, in pipeline mode: the BEGIN
        goes out with the first statement rather than on a round trip of its own, and the
        COMMIT with the closing sync."""
        # BEGIN and COMMIT by hand: psycopg's transaction blocks sync the pipeline on entry and
        # exit, a round trip each.
        try:
            with conn.pipeline():
                conn.execute(SNAPSHOT_BEGIN)
                result = fn(PgTxn(conn, self._table, self.seal))
                conn.execute("COMMIT")
        except BaseException:
            _abandon(conn)
            raise
        return result

    async def read_off_loop(self, fn: Callable[[IndexTxn], T]) -> T:
        """``read`` on a reader thread: for walks that may visit thousands of entries."""
        if self._closed:
            raise IndexUnavailable("index is closed")
        if self._reader_pool is None:
            self._reader_pool = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="pg-read")
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, self._counted_read, fn)

    def _counted_read(self, fn: Callable[[IndexTxn], T]) -> T:
        with self._off_loop_lock:
            self.reads_off_loop += 1
        try:
            # Walks that may visit thousands of entries: many statements, straight to a snapshot.
            return self._read(fn, single=False)
        finally:
            with self._off_loop_lock:
                self.reads_off_loop -= 1

    # writes
    async def write(self, fn: Callable[[IndexTxn], T]) -> T:
        """Run ``fn`` in the next group commit; returns once its commit is durable."""
        return await asyncio.wrap_future(self.submit(fn))

    def write_sync(self, fn: Callable[[IndexTxn], T]) -> T:
        return self.submit(fn).result()

    def submit(self, fn: Callable[[IndexTxn], T]) -> concurrent.futures.Future[T]:
        if self._closed:
            raise IndexUnavailable("index is closed")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._writer is None:
            self._writer = threading.Thread(target=self._writer_loop, name="pg-writer", daemon=True)
            self._writer.start()
        self._queue.put(_Job(fn, future))
        return future

    @property
    def pending_writes(self) -> int:
        return self._queue.qsize()

    def _writer_loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                break
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
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if live:
                self._commit_batch(live)
            if stop:
                break
        if self._writer_conn is not None:
            self._writer_conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._writer_conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._writer_conn = None
            conn = connect(self._dsn, timeout=self._timeout)
            conn.isolation_level = self._isolation
            # No server-side prepared statements on the writer: in pipeline mode, a statement
            # queued after one that failed (a serialization conflict) is skipped by the server,
            # its Parse included, while psycopg may count it as prepared; the next use then
            # fails with "prepared statement does not exist". Writes are few statements each.
            conn.prepare_threshold = None
            self._writer_conn = conn
        return conn

    def _drop_connection(self) -> None:
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None

    def _commit_batch(self, live: list[_Job]) -> None:
        reconnected = False
        for attempt in range(MAX_CONFLICT_RETRIES):
            started = time.perf_counter()
            self._committing = False
            try:
                conn = self._connection()
                results = self._run_batch(conn, live)
            except _Conflict:
                self.conflicts += 1
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
                continue
            except (_ConnectionLost, psycopg.OperationalError) as exc:
                self._drop_connection()
                if not self._committing and not reconnected:
                    # Lost before COMMIT was sent (a connection that died while idle: the server
                    # restarted): nothing was committed, so once more on a new connection. Lost
                    # during COMMIT the outcome is unknown: the callers are told, not guessed for.
                    reconnected = True
                    continue
                error: ImageVaultError = _unavailable()
                error.__cause__ = exc
                for job in live:
                    job.future.set_exception(error)
                return
            except ImageVaultError as exc:  # could not connect
                for job in live:
                    job.future.set_exception(exc)
                return
            except psycopg.Error as exc:
                log.error("index write failed: %s", exc.__class__.__name__)
                for job in live:
                    job.future.set_exception(IndexUnavailable("index database error"))
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
            job.future.set_exception(_unavailable("index database busy: too many conflicting writes"))

    def _run_batch(self, conn: psycopg.Connection[Any], live: list[_Job]) -> list[tuple[bool, Any]]:
        """Run every job in one transaction and commit it. A job that raises is rolled back
        alone (a savepoint each; a batch of one needs none: the whole transaction is its)."""
        if len(live) == 1:
            return [self._run_one(conn, live[0])]
        results: list[tuple[bool, Any]] = []
        txn = PgTxn(conn, self._table, self.seal)
        try:
            with conn.transaction():
                for job in live:
                    try:
                        with conn.transaction():
                            value = job.fn(txn)
                            txn.flush()
                    except Exception as exc:
                        if isinstance(exc, psycopg.OperationalError):
                            raise
                        txn.discard()  # its queued puts went with its savepoint
                        results.append((False, exc))
                    else:
                        results.append((True, value))
                self._committing = True
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:  # at COMMIT
            raise _Conflict() from exc
        return results

    def _run_one(self, conn: psycopg.Connection[Any], job: _Job) -> tuple[bool, Any]:
        """A batch of one (what a lone request's commit is) in pipeline mode: BEGIN goes out with
        its first statement that is waited for, statements whose results it does not read (a
        lock, an append, the queued puts) with the next one, and COMMIT with the closing sync.

        A connection lost before COMMIT is sent must be told apart from one lost during it
        (nothing committed: run again; or unknown: the callers are told). A job that waited for
        no statement has not yet shown that its connection is alive (one idle in the pool while
        the server restarted): a sync settles its statements before COMMIT is sent. Once a
        statement has come back, a loss up to the end is reported as a loss during COMMIT is
        (``IndexUnavailable``), saving that round trip. A failed append (a duplicate key) fails
        the job, rolled back."""
        txn = PgTxn(conn, self._table, self.seal)
        txn.pipelined = True
        outcome: tuple[bool, Any]
        try:
            with conn.pipeline() as pipeline:
                conn.execute(self._begin)
                try:
                    outcome = (True, job.fn(txn))
                    txn.flush()
                except Exception as exc:  # noqa: BLE001 - the job's own failure, handed to its caller
                    outcome = (False, exc)
                if not txn.waited or not outcome[0]:
                    try:
                        pipeline.sync()
                    except psycopg.OperationalError as exc:
                        raise _ConnectionLost() from exc
                if outcome[0]:
                    self._committing = True
                    conn.execute("COMMIT")  # sent, and its outcome read, by the pipeline's closing sync
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
            raise _Conflict() from exc
        except pg_errors.UniqueViolation as exc:  # only an append's plain INSERT raises it
            if outcome[0]:
                failure = ValueError(APPEND_NOT_LAST)
                failure.__cause__ = exc
                outcome = (False, failure)
        finally:
            _abandon(conn)
        return outcome

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watch in self._watches:
            watch.stop()
        if self._reader_pool is not None:
            self._reader_pool.shutdown(wait=True)
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
        self._pool.close()


# background job election ---------------------------------------------------------------------
JOB_LOCK_NAMESPACE = b"imagevault-job:"
# Server-side TCP keepalives of the lock session: a node that vanishes without closing its
# socket (power loss, a cut cable) is noticed within idle + interval * count seconds, and its
# session ends, which releases its advisory locks for another node to take. A killed process
# needs none of this: its kernel closes the socket, and the server ends the session at once.
LOCK_KEEPALIVE_IDLE = 10
LOCK_KEEPALIVE_INTERVAL = 5
LOCK_KEEPALIVE_COUNT = 3


def job_lock_key(job: str) -> int:
    """The advisory lock key of a job: 64 bits of a hash of its name (signed, as PostgreSQL's bigint)."""
    digest = hashlib.sha256(JOB_LOCK_NAMESPACE + job.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PgJobLocks:
    """Background jobs elected across every daemon on one database: a job's lease is a
    session-level advisory lock (``pg_try_advisory_lock``) held on a connection of its own,
    outside the pools (a pooled connection would carry the lock to whoever borrows it next).

    The lock lasts as long as the session: released by ``release_all``, by the process's exit
    (its socket closes) or by the server when keepalives find the peer gone. When the session
    is lost (the database restarted), every lock it held is lost with it: ``still_held`` says
    so, and the job's next round must win its lock again, on this node or another.
    """

    def __init__(self, dsn: str, *, connect_timeout: float = 3.0) -> None:
        self._dsn = dsn
        self._timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._held: set[str] = set()
        self._lock = threading.Lock()  # rounds of several jobs may ask from worker threads at once

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._drop()
            try:
                conn = psycopg.connect(
                    self._dsn, connect_timeout=max(2, int(self._timeout + 0.999)), autocommit=True,
                    application_name=APPLICATION_NAME + "-jobs",
                    keepalives=1, keepalives_idle=LOCK_KEEPALIVE_IDLE, keepalives_interval=LOCK_KEEPALIVE_INTERVAL,
                    keepalives_count=LOCK_KEEPALIVE_COUNT,
                    options=(f"-c tcp_keepalives_idle={LOCK_KEEPALIVE_IDLE} "
                             f"-c tcp_keepalives_interval={LOCK_KEEPALIVE_INTERVAL} "
                             f"-c tcp_keepalives_count={LOCK_KEEPALIVE_COUNT}"),
                )
            except psycopg.Error as exc:
                raise _unavailable() from exc
            self._conn = conn
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        if self._held:
            log.warning("the job lock session was lost: %d job(s) given up until their lock is won again",
                        len(self._held))
        self._held.clear()

    def try_lock(self, job: str) -> bool:
        with self._lock:
            if job in self._held and self._alive():
                return True
            try:
                conn = self._connection()
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (job_lock_key(job),)).fetchone()
            except psycopg.Error:
                self._drop()
                return False
            except IndexUnavailable:
                return False
            if row is not None and row[0]:
                self._held.add(job)
                return True
            return False

    def _alive(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._drop()
            return False
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            self._drop()
            return False
        return True

    def still_held(self) -> bool:
        with self._lock:
            return bool(self._held) and self._alive()

    def release_all(self) -> None:
        """Ending the session releases every lock it holds: no unlock calls to wait for."""
        with self._lock:
            self._held.clear()
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                self._conn = None


# key changes ---------------------------------------------------------------------------------
KEY_CHANNEL = "imagevault_key_generation"
KEY_RECHECK_SECONDS = 10.0  # the safety net: the generation is read again this often anyway


class PgKeyWatch:
    """This daemon's view of the index's key generation, kept current by a listener thread.

    A shred or key change bumps the generation and sends a ``NOTIFY`` in the same transaction
    (``PgTxn.notify_key_change``), so PostgreSQL delivers it only once that commit is durable,
    and never for a rolled-back attempt. The thread ``LISTEN``s on a connection of its own and,
    on each notification, on (re)connecting (notifications sent while it was away are lost),
    and every ``KEY_RECHECK_SECONDS`` regardless, reads the generation with ``read`` and calls
    ``on_change`` when it moved. Readers compare against ``generation`` (a local integer), so a
    use of a cached key costs no round trip to the database.
    """

    def __init__(self, dsn: str, read: Callable[[], int], on_change: Callable[[int], None], *,
                 initial: int, connect_timeout: float = 3.0) -> None:
        self._dsn = dsn
        self._read = read
        self._on_change = on_change
        self._timeout = connect_timeout
        self._stopping = threading.Event()
        self.generation = initial  # the thread reads the current one as soon as it listens
        self._thread = threading.Thread(target=self._run, name="key-watch", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        try:
            generation = self._read()
        except ImageVaultError:
            return  # the database is away: nothing can be read through it either
        if generation != self.generation:
            self.generation = generation
            self._on_change(generation)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                conn = connect(self._dsn, timeout=self._timeout)
            except ImageVaultError:
                self._stopping.wait(DOWN_BACKOFF * 4)
                continue
            try:
                conn.execute(f"LISTEN {KEY_CHANNEL}")
                self._refresh()  # whatever changed before LISTEN took effect
                while not self._stopping.is_set():
                    # Wakes on a notification or at the timeout: a read either way.
                    for _ in conn.notifies(timeout=KEY_RECHECK_SECONDS, stop_after=1):
                        pass
                    if not self._stopping.is_set():
                        self._refresh()
            except psycopg.Error:
                self._stopping.wait(DOWN_BACKOFF)
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.close()

    def stop(self) -> None:
        self._stopping.set()
        # Wake the listener now rather than at its next re-check (up to KEY_RECHECK_SECONDS per
        # close: every daemon stop and every test's service would wait that long). Any node
        # woken by this notification only re-reads the generation.
        with contextlib.suppress(ImageVaultError, psycopg.Error):
            with connect(self._dsn, timeout=self._timeout) as conn:
                conn.execute(f"NOTIFY {KEY_CHANNEL}")
        self._thread.join(timeout=KEY_RECHECK_SECONDS + 5)
