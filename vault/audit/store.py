"""The audit trail at rest: a hash chain in its own LMDB environment, ``<data_dir>/audit/``.

A separate environment (not more databases in the index) so that the trail can be copied,
shipped and verified on its own, and so that index maintenance (compaction, restore of a key
backup) never rewrites it. It reuses the index's group-committing ``Index`` (the only module
that imports lmdb) with its own two databases:

* ``entries``:   ``BE64(seq)`` → ``ENTRY || SHA-256(ENTRY)`` (``vault.audit.chain``)
* ``head``:      ``b"head"``    → ``BE64(seq) || hash`` of the last entry;
                 ``b"by_record"`` → ``BE64(seq)``: the record index is complete up to this entry
* ``by_record``: ``ID || BE64(seq)`` → empty, one key per record id an entry names

``by_record`` answers "which entries name this record" (the audit listing's ``record_id``
filter, a patient's access report) without walking the trail. It is derived data, written in
the append's own transaction; a trail written before it existed is indexed on first use
(``index_records``), a batch per write transaction. It is not covered by the chain: a query
through it re-reads every entry it points to from ``entries``, so a forged key can add nothing,
and an entry it lost is still found by ``verify`` and by paging without the filter.

Appends run inside the writer thread's transaction: each reads the head, builds the next entry
on it and writes entry and head together, so the chain stays linear however many requests (or
processes: LMDB serialises write transactions across processes) append at once, and one fsync
covers a whole group of appends.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vault.audit.chain import (
    GENESIS,
    HASH_LEN,
    AuditEntry,
    AuditEvent,
    MalformedEntry,
    decode_stored,
    encode_entry,
    entry_hash,
)
from vault.audit.query import AuditFilter
from vault.index.engine import IndexEngine, IndexTxn
from vault.index.lmdb import Index

DB_ENTRIES = b"entries"
DB_HEAD = b"head"
DB_BY_RECORD = b"by_record"
AUDIT_DBS = (DB_ENTRIES, DB_HEAD, DB_BY_RECORD)
HEAD_KEY = b"head"
INDEXED_KEY = b"by_record"
INDEX_BATCH = 10_000
MAX_PAGE = 1000
# A page for one tenant's auditor may have to skip other tenants' entries; bound the work.
SCAN_LIMIT = 50_000


def _seq_key(seq: int) -> bytes:
    return struct.pack(">Q", seq)


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    next_after: int | None  # pass as ``after`` for the next page; None: nothing more now


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int  # entries verified (all of them when ok)
    head: str | None  # hex hash of the last good entry
    bad_seq: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        if self.ok:
            return {"ok": True, "entries": self.entries, "head": self.head}
        return {"ok": False, "entries": self.entries, "head": self.head, "bad_seq": self.bad_seq, "reason": self.reason}


def _indexed_through(txn: IndexTxn) -> int:
    raw = txn.get_bytes(DB_HEAD, INDEXED_KEY)
    return 0 if raw is None else int(struct.unpack(">Q", raw)[0])


def _index_entry(txn: IndexTxn, seq: int, record_ids: tuple[bytes, ...]) -> None:
    for rid in set(record_ids):
        txn.put_bytes(DB_BY_RECORD, rid + _seq_key(seq), b"")
    txn.put_bytes(DB_HEAD, INDEXED_KEY, _seq_key(seq))


def _candidates(txn: IndexTxn, after: int, record_id: bytes | None) -> Iterator[tuple[int, bytes]]:
    """(seq, stored entry) with seq > ``after``: every entry, or those the record index lists."""
    if record_id is None:
        for key, raw in txn.scan_items(DB_ENTRIES, _seq_key(after + 1)):
            yield struct.unpack(">Q", key)[0], raw
        return
    for key in txn.scan_keys(DB_BY_RECORD, record_id + _seq_key(after + 1), record_id + b"\xff" * 8 + b"\x00"):
        seq = struct.unpack(">Q", key[-8:])[0]
        raw = txn.get_bytes(DB_ENTRIES, _seq_key(seq))
        if raw is not None:
            yield seq, raw


class AuditLog:
    """Append-only, hash-chained audit entries. ``close()`` when done."""

    def __init__(
        self, path: Path, clock: Callable[[], datetime], *, map_size: int = 1 << 26, readonly: bool = False,
        index: IndexEngine | None = None,
    ) -> None:
        """The trail in its LMDB environment at ``path``, or on ``index`` when given (an engine
        holding ``AUDIT_DBS``: the PostgreSQL trail, ``vault.components.open_audit``)."""
        self._index: IndexEngine = index if index is not None else Index(
            path, map_size=map_size, readonly=readonly, databases=AUDIT_DBS)
        self._clock = clock
        self.path = path

    def close(self) -> None:
        self._index.close()

    # writing -------------------------------------------------------------------------------
    def _appender(self, event: AuditEvent) -> Callable[[IndexTxn], AuditEntry]:
        moment = self._clock()

        def append(txn: IndexTxn) -> AuditEntry:
            txn.lock(DB_HEAD, HEAD_KEY)  # one chain across daemons: appends queue on the head
            txn.prefetch([(DB_HEAD, HEAD_KEY), (DB_HEAD, INDEXED_KEY)])  # read after the lock: the latest
            head = txn.get_bytes(DB_HEAD, HEAD_KEY)
            seq, prev = (0, GENESIS) if head is None else (struct.unpack(">Q", head[:8])[0], head[8:])
            seq += 1
            encoded = encode_entry(seq, moment, event, prev)
            digest = entry_hash(encoded)
            txn.put_bytes(DB_ENTRIES, _seq_key(seq), encoded + digest, append=True)
            txn.put_bytes(DB_HEAD, HEAD_KEY, _seq_key(seq) + digest)
            if _indexed_through(txn) == seq - 1:  # else index_records catches up, in order
                _index_entry(txn, seq, event.record_ids)
            return AuditEntry(seq, moment, event, prev, digest)

        return append

    async def append(self, event: AuditEvent) -> AuditEntry:
        """Append and return once the entry is durable (group-committed)."""
        return await self._index.write(self._appender(event))

    def append_sync(self, event: AuditEvent) -> AuditEntry:
        """Blocking variant for the CLI."""
        return self._index.write_sync(self._appender(event))

    @property
    def index(self) -> IndexEngine:
        """The engine the trail is stored on (``imagevault index copy`` reads and writes it)."""
        return self._index

    def copy_to(self, path: Path) -> None:
        """A consistent, compacted copy of the audit environment (for backups; LMDB only)."""
        if not isinstance(self._index, Index):
            raise TypeError("only an LMDB audit trail is copied as files")
        self._index.copy_to(path, compact=True)

    def map_usage(self) -> tuple[int, int] | None:
        """(bytes of the audit environment's map in use, map size); None off LMDB."""
        return self._index.map_usage()

    # reading -------------------------------------------------------------------------------
    def head(self) -> tuple[int, bytes]:
        raw = self._index.read(lambda t: t.get_bytes(DB_HEAD, HEAD_KEY))
        return (0, GENESIS) if raw is None else (struct.unpack(">Q", raw[:8])[0], raw[8:])

    def page(self, after: int, limit: int, wanted: AuditFilter | None = None) -> AuditPage:
        """Entries with seq > ``after`` that match ``wanted`` (None: all), in order. With a
        ``record_id`` the record index is walked instead of the trail (``index_records`` must
        have caught up, as ``Vault`` makes sure)."""
        limit = max(1, min(limit, MAX_PAGE))
        wanted = wanted or AuditFilter()

        def collect(txn: IndexTxn) -> AuditPage:
            found: list[AuditEntry] = []
            scanned = 0
            last = after
            for seq, raw in _candidates(txn, after, wanted.record_id):
                entry, _ = decode_stored(raw)
                scanned += 1
                last = seq
                if wanted.matches(entry):
                    found.append(entry)
                    if len(found) == limit:
                        break
                if scanned >= SCAN_LIMIT:
                    break
            more = next(iter(_candidates(txn, last, wanted.record_id)), None) is not None
            return AuditPage(found, last if more else None)

        return self._index.read(collect)

    def stored_after(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` stored values (``ENTRY || HASH``) with seq > ``after``, in order, with
        their keys' sequence numbers: what an export ships, bytes as stored."""

        def take(txn: IndexTxn) -> list[tuple[int, bytes]]:
            out = []
            for key, raw in txn.scan_items(DB_ENTRIES, _seq_key(after + 1)):
                out.append((int(struct.unpack(">Q", key)[0]), bytes(raw)))
                if len(out) == limit:
                    break
            return out

        return self._index.read(take)

    def seqs_naming(self, record_ids: list[bytes], through: int) -> list[int]:
        """The sequence numbers (sorted, at most ``through``) of the entries that name any of
        ``record_ids``, from the record index."""

        def collect(txn: IndexTxn) -> list[int]:
            seqs: set[int] = set()
            for rid in record_ids:
                for key in txn.scan_keys(DB_BY_RECORD, rid + _seq_key(1), rid + _seq_key(through + 1)):
                    seqs.add(struct.unpack(">Q", key[-8:])[0])
            return sorted(seqs)

        return self._index.read(collect)

    def entries(self, seqs: list[int]) -> list[AuditEntry]:
        """The entries with these sequence numbers (one read transaction; missing ones skipped)."""

        def collect(txn: IndexTxn) -> list[AuditEntry]:
            out = []
            for seq in seqs:
                raw = txn.get_bytes(DB_ENTRIES, _seq_key(seq))
                if raw is not None:
                    out.append(decode_stored(raw)[0])
            return out

        return self._index.read(collect)

    def record_index_complete(self) -> bool:
        return self._index.read(lambda t: _indexed_through(t) >= self._head_seq(t))

    @staticmethod
    def _head_seq(txn: IndexTxn) -> int:
        head = txn.get_bytes(DB_HEAD, HEAD_KEY)
        return 0 if head is None else int(struct.unpack(">Q", head[:8])[0])

    async def index_records(self) -> int:
        """Bring the record index up to the head (a trail written before it existed, or an
        entry appended meanwhile by an older program); one batch per write transaction, so
        appends interleave. How many entries were indexed."""
        done = 0
        while True:
            def batch(txn: IndexTxn) -> int:
                txn.lock(DB_HEAD, HEAD_KEY)
                count = 0
                for key, raw in txn.scan_items(DB_ENTRIES, _seq_key(_indexed_through(txn) + 1)):
                    seq = struct.unpack(">Q", key)[0]
                    try:
                        entry, _ = decode_stored(raw)
                    except MalformedEntry:  # verify reports it; it names no record we can trust
                        _index_entry(txn, seq, ())
                        count += 1
                        continue
                    _index_entry(txn, seq, entry.event.record_ids)
                    count += 1
                    if count == INDEX_BATCH:
                        break
                return count

            count = await self._index.write(batch)
            done += count
            if count < INDEX_BATCH:
                return done

    def count(self) -> int:
        return self._index.read(lambda t: t.count(DB_ENTRIES))

    def _raw_batches(self, batch: int) -> Iterator[list[tuple[bytes, bytes]]]:
        # Short read transactions, one per batch: a long verify must not pin old pages.
        start = _seq_key(1)
        while True:
            def take(txn: IndexTxn, start: bytes = start) -> list[tuple[bytes, bytes]]:
                out = []
                for item in txn.scan_items(DB_ENTRIES, start):
                    out.append(item)
                    if len(out) == batch:
                        break
                return out

            items = self._index.read(take)
            if not items:
                return
            yield items
            start = items[-1][0] + b"\x00"

    def verify(self, progress: Callable[[int, int], None] | None = None, *, batch: int = 10_000) -> VerifyResult:
        """Walk the chain from seq 1; the first entry that is missing, malformed, out of order,
        not linked to its predecessor or not matching its hash is reported as ``bad_seq``."""
        head_seq, head_hash = self.head()
        total = max(head_seq, self.count())
        expected_seq = 1
        prev = GENESIS
        verified = 0

        def bad(seq: int, reason: str) -> VerifyResult:
            return VerifyResult(False, verified, prev.hex() if verified else None, seq, reason)

        for items in self._raw_batches(batch):
            for key, raw in items:
                seq = struct.unpack(">Q", key)[0] if len(key) == 8 else -1
                if seq != expected_seq:
                    return bad(expected_seq, "entry missing" if seq > expected_seq else "unexpected key")
                try:
                    entry, encoded = decode_stored(raw)
                except MalformedEntry as exc:
                    return bad(seq, f"malformed entry: {exc}")
                if entry.seq != seq:
                    return bad(seq, "sequence number does not match its key")
                if entry.prev_hash != prev:
                    return bad(seq, "prev_hash does not match the previous entry")
                if entry_hash(encoded) != entry.hash:
                    return bad(seq, "hash does not match the entry")
                prev = entry.hash
                verified += 1
                expected_seq += 1
            if progress is not None:
                progress(verified, total)
        # The head is written with every entry: a chain shorter than its head lost its tail.
        if head_seq >= expected_seq:
            return bad(expected_seq, "entry missing (chain ends before its head)")
        if head_seq != verified or (verified and head_hash != prev):
            return bad(head_seq or 1, "head does not match the last entry")
        if len(head_hash) != HASH_LEN:
            return bad(head_seq, "malformed head")
        return VerifyResult(True, verified, prev.hex() if verified else GENESIS.hex())
