"""The audit trail at rest: a hash chain in its own LMDB environment, ``<data_dir>/audit/``.

A separate environment (not more databases in the index) so that the trail can be copied,
shipped and verified on its own, and so that index maintenance (compaction, restore of a key
backup) never rewrites it. It reuses the index's group-committing ``Index`` (the only module
that imports lmdb) with its own two databases:

* ``entries``: ``BE64(seq)`` → ``ENTRY || SHA-256(ENTRY)`` (``vault.audit.chain``)
* ``head``:    ``b"head"``    → ``BE64(seq) || hash`` of the last entry

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
    GENESIS, HASH_LEN, AuditEntry, AuditEvent, MalformedEntry, decode_stored, encode_entry, entry_hash,
)
from vault.index.lmdb import Index, IndexTxn

DB_ENTRIES = b"entries"
DB_HEAD = b"head"
HEAD_KEY = b"head"
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


class AuditLog:
    """Append-only, hash-chained audit entries. ``close()`` when done."""

    def __init__(self, path: Path, clock: Callable[[], datetime], *, map_size: int = 1 << 26, readonly: bool = False) -> None:
        self._index = Index(path, map_size=map_size, readonly=readonly, databases=(DB_ENTRIES, DB_HEAD))
        self._clock = clock
        self.path = path

    def close(self) -> None:
        self._index.close()

    # writing -------------------------------------------------------------------------------
    def _appender(self, event: AuditEvent) -> Callable[[IndexTxn], AuditEntry]:
        moment = self._clock()

        def append(txn: IndexTxn) -> AuditEntry:
            head = txn.get_bytes(DB_HEAD, HEAD_KEY)
            seq, prev = (0, GENESIS) if head is None else (struct.unpack(">Q", head[:8])[0], head[8:])
            seq += 1
            encoded = encode_entry(seq, moment, event, prev)
            digest = entry_hash(encoded)
            txn.put_bytes(DB_ENTRIES, _seq_key(seq), encoded + digest, append=True)
            txn.put_bytes(DB_HEAD, HEAD_KEY, _seq_key(seq) + digest)
            return AuditEntry(seq, moment, event, prev, digest)

        return append

    async def append(self, event: AuditEvent) -> AuditEntry:
        """Append and return once the entry is durable (group-committed)."""
        return await self._index.write(self._appender(event))

    def append_sync(self, event: AuditEvent) -> AuditEntry:
        """Blocking variant for the CLI."""
        return self._index.write_sync(self._appender(event))

    def copy_to(self, path: Path) -> None:
        """A consistent, compacted copy of the audit environment (for backups)."""
        self._index.copy_to(path, compact=True)

    # reading -------------------------------------------------------------------------------
    def head(self) -> tuple[int, bytes]:
        raw = self._index.read(lambda t: t.get_bytes(DB_HEAD, HEAD_KEY))
        return (0, GENESIS) if raw is None else (struct.unpack(">Q", raw[:8])[0], raw[8:])

    def page(self, after: int, limit: int, scopes: frozenset[str] | None = None) -> AuditPage:
        """Entries with seq > ``after`` whose scope is in ``scopes`` (None: all), in order."""
        limit = max(1, min(limit, MAX_PAGE))

        def collect(txn: IndexTxn) -> AuditPage:
            found: list[AuditEntry] = []
            scanned = 0
            last = after
            for key, raw in txn.scan_items(DB_ENTRIES, _seq_key(after + 1)):
                entry, _ = decode_stored(raw)
                scanned += 1
                last = struct.unpack(">Q", key)[0]
                if scopes is None or entry.event.scope in scopes:
                    found.append(entry)
                    if len(found) == limit:
                        break
                if scanned >= SCAN_LIMIT:
                    break
            more = txn.get_bytes(DB_ENTRIES, _seq_key(last + 1)) is not None
            return AuditPage(found, last if more else None)

        return self._index.read(collect)

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
