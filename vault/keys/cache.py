"""A bounded, expiring in-memory cache of unwrapped data keys, for reads.

Only reads consult it (an upload's DEK is fresh). Entries expire after ``ttl`` seconds and the
least recently used entry is evicted past ``max_size``. ``drop`` is called when a record is
shredded so that a shredded record's key does not outlive the shred in this process. Keys are
never logged; ``__repr__`` shows only counts.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class DekCache:
    def __init__(self, max_size: int = 4096, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._max = max_size
        self._ttl = ttl
        self._clock = clock
        self.hits = 0
        self.misses = 0

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

    def put(self, record_id: bytes, dek: bytes) -> None:
        if self._max <= 0:
            return
        self._entries[record_id] = (self._clock() + self._ttl, dek)
        self._entries.move_to_end(record_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop(self, record_id: bytes) -> None:
        self._entries.pop(record_id, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DekCache(entries={len(self._entries)}, hits={self.hits}, misses={self.misses})"
