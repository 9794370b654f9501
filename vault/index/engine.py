"""The index engine interface: an ordered key -> value store of named databases.

Two engines implement it: LMDB (``vault.index.lmdb``, embedded, the default) and PostgreSQL
(``vault.index.postgres``, shared by several daemons). Services type against what is here and
never learn which engine runs; ``vault.components.open_index`` is the one place that chooses.

Every engine holds the same bytes under the same keys: blinded keys (``vault.index.schema``) and
sealed values (``vault.index.integrity``). So what one engine stores is exactly what the other
would, and ``imagevault index copy`` moves data between them byte for byte.

An engine offers three kinds of work, each one transaction:

* ``read(fn)``: ``fn(txn)`` on a consistent snapshot, on the calling thread; ``read_off_loop``
  runs the same on a reader thread for walks that may visit thousands of entries.
* ``write(fn)`` / ``write_sync`` / ``submit``: ``fn(txn)`` in the next group commit of the
  engine's single writer thread; each ``fn`` is rolled back alone if it raises. ``fn`` must be a
  pure function of the transaction (it may read the closure it was built with, but changes
  nothing outside the transaction): an engine may run it again on a fresh transaction when the
  database reports a conflict with a concurrent writer (PostgreSQL's serialization failures).

``IndexTxn`` carries the typed operations (records, keys, uploads, documents) built on a few
primitives that each engine implements (``_get``, ``_put``, ``_delete``, ``_scan``, ...).
"""

from __future__ import annotations

import concurrent.futures
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from vault import codec
from vault.errors import IndexTampered
from vault.index import schema
from vault.index.integrity import IndexSeal, record_body
from vault.index.records import StoredRecord
from vault.index.uploads import UploadState

T = TypeVar("T")


class KeyCursor(Protocol):
    """The keys under one prefix, by their remainder after it, visited in order by seeking
    forward (``IndexTxn.prefix_cursor``).

    ``seek(target)`` answers the smallest remainder ``>= target`` (and ``< stop``), or None once
    there is none. Every key it lands on counts in ``landed``: the index entries a walk has
    visited, the unit of the search scan budget. Seeking to where it already is, or behind,
    costs nothing."""

    landed: int

    def seek(self, target: bytes) -> bytes | None: ...


class IndexTxn(ABC):
    """Typed operations over one transaction. Valid only inside the callback that got it."""

    def __init__(self, seal: IndexSeal | None = None) -> None:
        self._seal = seal

    # primitives, one set per engine --------------------------------------------------------
    @abstractmethod
    def _get(self, db: bytes, key: bytes) -> bytes | None: ...

    @abstractmethod
    def _put(self, db: bytes, key: bytes, value: bytes) -> None: ...

    @abstractmethod
    def _delete(self, db: bytes, key: bytes) -> bool: ...

    @abstractmethod
    def _scan(self, db: bytes, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) with start <= key < stop (None: to the end), in order."""

    @abstractmethod
    def _scan_keys(self, db: bytes, start: bytes, stop: bytes | None) -> Iterator[bytes]:
        """Keys with start <= key < stop (None: to the end), in order."""

    @abstractmethod
    def _append(self, db: bytes, key: bytes, value: bytes) -> None:
        """Insert ``key``, which the caller guarantees sorts after every existing key;
        ``ValueError`` if it does not (or exists)."""

    @abstractmethod
    def count(self, db: bytes) -> int: ...

    @abstractmethod
    def prefix_cursor(self, db: bytes, prefix: bytes, stop: bytes,
                      attach: Sequence[tuple[bytes, bytes]] = ()) -> KeyCursor:
        """A forward-only cursor over the keys ``prefix || rest`` with ``rest < stop``.

        ``attach``: (db, key prefix) pairs of values a walk reads for the keys it lands on, each
        under ``key prefix || record id of the key`` (``schema.record_id_of``). A hint, as
        ``prefetch``: an engine with a round trip per query reads them in the statement that
        fetches the keys; others ignore it."""

    def notify_key_change(self, generation: int) -> None:
        """Tell the other processes on this index, once this transaction commits, that the key
        generation moved (engines whose readers cannot cheaply read it on every use)."""

    @abstractmethod
    def lock(self, db: bytes, key: bytes) -> None:
        """Serialise this write transaction with every other one that locks the same key, on
        any daemon, until it commits; later reads in this transaction see what those committed.
        (LMDB has one writer at a time already: nothing to do there.)"""

    @property
    def seal(self) -> IndexSeal:
        """The index integrity key; writing a record or token without it is a programming error
        (the service always opens it, ``vault.services.integrity``)."""
        if self._seal is None:
            raise RuntimeError("index opened without its integrity key")
        return self._seal

    def get_many(self, db: bytes, keys: list[bytes]) -> list[bytes | None]:
        """The values of ``keys`` (None where absent), in their order. An engine with a round
        trip per query answers them with one."""
        return [self._get(db, key) for key in keys]

    def prefetch(self, wanted: list[tuple[bytes, bytes]]) -> None:
        """A hint: the (db, key) pairs this transaction is about to read, of any databases.
        An engine with a round trip per query reads them all with one, and later reads of
        them in this transaction are answered from what it fetched; others ignore it."""

    # records and their index entries
    def get_record(self, record_id: bytes) -> StoredRecord | None:
        """The record, authenticated (``IndexTampered`` if its MAC fails). Without an integrity
        key (offline tools and tests only) the value is decoded unchecked."""
        return self.record_from(record_id, self._get(schema.DB_RECORDS, record_id))

    def record_from(self, record_id: bytes, raw: bytes | None) -> StoredRecord | None:
        """``get_record`` of a value already read (``get_many``)."""
        if raw is None:
            return None
        body = self._seal.open_record(record_id, raw) if self._seal is not None else record_body(raw)
        return StoredRecord.from_bytes(record_id, body)

    def put_record(self, record: StoredRecord, previous: StoredRecord | None = None) -> None:
        old = set(previous.index_entries()) if previous is not None else set()
        new = set(record.index_entries())
        value = self.seal.seal_record(record.id, record.to_bytes())
        for db, key in old - new:
            self._delete(db, key)
        for db, key in new - old:
            self._put(db, key, b"")
        self._put(schema.DB_RECORDS, record.id, value)

    def has_record(self, record_id: bytes) -> bool:
        return self._get(schema.DB_RECORDS, record_id) is not None

    def put_record_value(self, record_id: bytes, value: bytes) -> None:
        """Store an already sealed record value as it is (the integrity upgrade)."""
        self._put(schema.DB_RECORDS, record_id, value)

    def delete_record(self, record: StoredRecord) -> None:
        for db, key in record.index_entries():
            self._delete(db, key)
        self._delete(schema.DB_RECORDS, record.id)
        self._delete(schema.DB_DEKS, record.id)
        self._delete(schema.DB_JOBS, schema.rendition_job_key(record.id))

    def move_patient(self, tenant: str, old: bytes, new: bytes) -> int:
        """Move every record of one patient from HMAC ``old`` to ``new`` (a shred epoch re-keying
        the tenant's blind index): its ``by_patient`` entries and the HMAC inside each record,
        the only two places it is written. How many records moved."""
        old_prefix = schema.patient_prefix(tenant, old)
        new_prefix = schema.patient_prefix(tenant, new)
        keys = list(self.scan_keys(schema.DB_BY_PATIENT, old_prefix, old_prefix + b"\xff" * (schema.SUFFIX_LEN + 1)))
        moved = 0
        seal = self.seal
        for key in keys:
            rid = schema.record_id_of(key)
            raw = self._get(schema.DB_RECORDS, rid)
            if raw is None:
                continue
            try:
                # Checked before it is sealed again: a re-key must not launder a tampered record
                # (left where it is, under a key about to be destroyed: unfindable, not forged).
                body = seal.open_record(rid, raw)
            except IndexTampered:
                continue
            updated = StoredRecord.with_patient_hmac_bytes(body, old, new)
            if updated is None:
                continue
            self._put(schema.DB_RECORDS, rid, seal.seal_record(rid, updated))
            self._delete(schema.DB_BY_PATIENT, key)
            self._put(schema.DB_BY_PATIENT, new_prefix + key[len(old_prefix):], b"")
            moved += 1
        return moved

    # resumable uploads (vault/index/uploads.py)
    def get_upload(self, upload_id: bytes) -> UploadState | None:
        """The upload's state, authenticated (``IndexTampered`` if its MAC fails)."""
        raw = self._get(schema.DB_UPLOADS, upload_id)
        if raw is None:
            return None
        return UploadState.from_bytes(upload_id, self.seal.open_upload(upload_id, raw))

    def put_upload(self, state: UploadState) -> None:
        self._put(schema.DB_UPLOADS, state.id, self.seal.seal_upload(state.id, state.to_bytes()))

    def delete_upload(self, upload_id: bytes) -> None:
        self._delete(schema.DB_UPLOADS, upload_id)

    def iter_upload_ids(self) -> Iterator[bytes]:
        return self._scan_keys(schema.DB_UPLOADS, b"", None)

    def staged_blob_ids(self) -> frozenset[str]:
        """Every blob id an upload state lists: live staged data, which recovery and gc keep.
        A state that fails its MAC is skipped (its segments are then orphans like any other)."""
        ids: set[str] = set()
        for upload_id in list(self.iter_upload_ids()):
            try:
                state = self.get_upload(upload_id)
            except IndexTampered:
                continue
            if state is not None:
                ids.update(s.blob_id for s in state.segments)
        return frozenset(ids)

    def get_dek(self, record_id: bytes) -> str | None:
        raw = self._get(schema.DB_DEKS, record_id)
        return None if raw is None else raw.decode()

    def put_dek(self, record_id: bytes, wrapped: str) -> None:
        self._put(schema.DB_DEKS, record_id, wrapped.encode())

    def iter_deks(self, after: bytes | None = None) -> Iterator[tuple[bytes, str]]:
        for key, value in self._scan(schema.DB_DEKS, after + b"\x00" if after is not None else b"", None):
            yield key, value.decode()

    def iter_record_ids(self) -> Iterator[bytes]:
        return self._scan_keys(schema.DB_RECORDS, b"", None)

    def scan_keys(self, db: bytes, start: bytes, stop: bytes) -> Iterator[bytes]:
        """Keys k with start <= k < stop, in order."""
        return self._scan_keys(db, start, stop)

    # small JSON documents: tokens, tenants, jobs, meta
    def get_doc(self, db: bytes, key: bytes) -> dict[str, Any] | None:
        raw = self._get(db, key)
        return None if raw is None else codec.loads(raw)

    def put_doc(self, db: bytes, key: bytes, doc: dict[str, Any]) -> None:
        self._put(db, key, json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())

    def delete_key(self, db: bytes, key: bytes) -> bool:
        return self._delete(db, key)

    def bump_stats(self, tenant: str, records: int, size: int) -> None:
        """Adjust the per-tenant record and byte counts (``meta`` ``stats:<tenant>``)."""
        key = schema.stats_key(tenant)
        doc = self.get_doc(schema.DB_META, key) or {"records": 0, "bytes": 0}
        doc["records"] += records
        doc["bytes"] += size
        self.put_doc(schema.DB_META, key, doc)

    def iter_docs(self, db: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
        for key, value in self._scan(db, b"", None):
            yield key, codec.loads(value)

    def put_marker(self, db: bytes, key: bytes) -> None:
        self._put(db, key, b"")

    # raw values (the audit chain stores its own binary encoding)
    def get_bytes(self, db: bytes, key: bytes) -> bytes | None:
        return self._get(db, key)

    def put_bytes(self, db: bytes, key: bytes, value: bytes, *, append: bool = False) -> None:
        """``append=True``: the caller guarantees ``key`` sorts after every existing key."""
        if append:
            self._append(db, key, value)
        else:
            self._put(db, key, value)

    def scan_items(self, db: bytes, start: bytes, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with start <= key < stop (no stop: to the end), in order."""
        return self._scan(db, start, stop)


class KeyWatch(Protocol):
    """The index's key generation as last seen by this process (``watch_key_changes``)."""

    generation: int


class JobLocks(Protocol):
    """Exclusive, non-blocking locks named by background job, held by this process until it
    releases them or its session with the index ends (a crash, a lost connection)."""

    def try_lock(self, job: str) -> bool:
        """True if this process now holds ``job``'s lock (or held it already)."""

    def still_held(self) -> bool:
        """False if the locks held so far were lost (the session ended): they are all gone."""

    def release_all(self) -> None: ...


class IndexEngine(Protocol):
    """What services use of an index (``vault.index.lmdb.Index``, ``vault.index.postgres.PgIndex``)."""

    # The index integrity key, set by the service once unwrapped (vault.services.integrity).
    seal: IndexSeal | None
    commits: int
    reads_off_loop: int
    engine: str  # "lmdb" | "postgres"

    def read(self, fn: Callable[[IndexTxn], T]) -> T: ...

    async def read_off_loop(self, fn: Callable[[IndexTxn], T]) -> T: ...

    async def write(self, fn: Callable[[IndexTxn], T]) -> T: ...

    def write_sync(self, fn: Callable[[IndexTxn], T]) -> T: ...

    def submit(self, fn: Callable[[IndexTxn], T]) -> concurrent.futures.Future[T]: ...

    @property
    def pending_writes(self) -> int: ...

    def map_usage(self) -> tuple[int, int] | None:
        """(bytes in use, map size) of an engine with a fixed-size map; None for the others."""

    def databases(self) -> tuple[bytes, ...]:
        """The named databases this index holds."""

    def clear_stale_readers(self) -> int:
        """Free what readers of processes that died hold (LMDB reader slots); the count freed."""

    def watch_key_changes(self, read: Callable[[], int], on_change: Callable[[int], None], *,
                          initial: int = 0) -> KeyWatch | None:
        """A watch that keeps ``generation`` (from ``initial``) current: ``read`` again when told
        of a change, ``on_change`` called when it moved; None where ``read`` on every use is cheap (LMDB: a
        read of the memory map)."""

    def job_locks(self) -> JobLocks | None:
        """Locks that elect background jobs across every process sharing this index (several
        hosts); None where a per-host file lock is enough (LMDB: one host by construction)."""

    def close(self) -> None: ...


