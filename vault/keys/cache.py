"""A bounded, expiring in-memory cache of unwrapped data keys, for reads.

Only reads consult it (an upload's DEK is fresh). Entries expire after ``ttl`` seconds and the
least recently used entry is evicted past ``max_size``. ``drop`` is called when a record is
shredded so that a shredded record's key does not outlive the shred in this process. Keys are
never logged; ``__repr__`` shows only counts.

A read that was already unwrapping a key (a Transit round trip) when the record was shredded
must not put that key back afterwards: it would sit in memory for the whole TTL after the
erasure. So every ``drop`` advances a generation, readers note ``generation`` before they
unwrap and pass it to ``put(..., since=...)``, and a key dropped since then is not cached. The
memory of drops is bounded (``_DROP_MEMORY`` record ids); past it, puts that started before the
oldest forgotten drop are refused (rarer caching, never a resurrected key).

A key derived from a cached DEK (the metadata subkey every search result needs) may be kept in
the DEK's own entry (``derived``): it leaves with the DEK, on a shred's ``drop``, on eviction,
on expiry and on ``clear``, so it never outlives the key it came from.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

# An entry: [expires at, DEK, the key derived from it or None].
_EXPIRES, _DEK, _DERIVED = 0, 1, 2


_DROP_MEMORY = 65536


class DekCache:
    def __init__(self, max_size: int = 4096, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[bytes, list] = OrderedDict()
        self._max = max_size
        self._ttl = ttl
        self._clock = clock
        self.hits = 0
        self.misses = 0
        self.generation = 0
        self._dropped: OrderedDict[bytes, int] = OrderedDict()  # record id -> generation of its drop
        self._forgotten = 0  # drops older than this generation are no longer remembered

    def get(self, record_id: bytes) -> bytes | None:
        entry = self._entries.get(record_id)
        if entry is None or entry[0] < self._clock():
            if entry is not None:
                del self._entries[record_id]
            self.misses += 1
            return None
        self._entries.move_to_end(record_id)
        self.hits += 1
        return entry[1]

    def peek(self, record_id: bytes) -> bool:
        """Whether an unexpired key of ``record_id`` is cached; counts nothing, moves nothing."""
        entry = self._entries.get(record_id)
        return entry is not None and entry[_EXPIRES] >= self._clock()

    def put(self, record_id: bytes, dek: bytes, *, since: int | None = None) -> None:
        """Cache ``dek``; ``since``: the ``generation`` noted before it was unwrapped, so a key
        whose record was dropped (shredded) meanwhile is not cached."""
        if self._max <= 0:
            return
        if since is not None:
            dropped = self._dropped.get(record_id)
            if (dropped is not None and dropped > since) or self._forgotten > since:
                return
        self._entries[record_id] = [self._clock() + self._ttl, dek, None]
        self._entries.move_to_end(record_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def derived(self, record_id: bytes, dek: bytes, derive: Callable[[bytes, bytes], bytes]) -> bytes:
        """``derive(dek, record_id)``, kept in the entry of that very DEK when it is cached (and
        unexpired), so a record read again skips the derivation. Only one derivation may be
        kept per entry: callers pass the same ``derive`` (the metadata subkey)."""
        entry = self._entries.get(record_id)
        if entry is None or entry[_DEK] != dek or entry[_EXPIRES] < self._clock():
            return derive(dek, record_id)
        if entry[_DERIVED] is None:
            entry[_DERIVED] = derive(dek, record_id)
        return entry[_DERIVED]

    def drop(self, record_id: bytes) -> None:
        self._entries.pop(record_id, None)
        self.generation += 1
        self._dropped[record_id] = self.generation
        self._dropped.move_to_end(record_id)
        while len(self._dropped) > _DROP_MEMORY:
            _, forgotten = self._dropped.popitem(last=False)
            self._forgotten = forgotten

    def clear(self) -> None:
        self._entries.clear()
        self.generation += 1
        self._dropped.clear()
        self._forgotten = self.generation

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DekCache(entries={len(self._entries)}, hits={self.hits}, misses={self.misses})"
