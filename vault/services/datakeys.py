"""Access to unwrapped keys: record data keys (through the DEK cache) and tenant index keys.

Every service that decrypts goes through here, so the cache, its drop generation and the
batching of KMS calls are applied the same way for reads, searches, exports and scrubs.

Several processes may serve one index (``serve --workers``, the CLI beside a daemon), each with
its own caches. A shred, rotation, retirement or epoch bumps the index's key generation
(``meta`` ``key_generation``) in its own commit; before any cached key is used, and before a
pre-wrapped key is taken from the pool, ``DataKeys.drop_if_stale`` reads it (one small index
read) and, when it moved, empties this process's DEK cache, DEK pool and unwrapped tenant keys.
So a key shredded through one worker is never served from another's memory, and no worker
wraps a new record under a key version that a rotation elsewhere has left behind.

On LMDB that read is a read of the memory map. On PostgreSQL it would be a round trip on the
event loop for every use of a cached key, so a daemon that runs its background jobs
(``watch``) keeps the generation current with the engine's watch instead (``LISTEN``/``NOTIFY``
sent in the shred's own transaction, and a periodic re-read as a safety net), and empties its
caches as soon as the notification arrives rather than at its next use of a key: a shredded
key leaves the memory of every node within the notification's delivery time. A request that
reads the record after the shred committed finds it gone, whatever any cache holds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vault.config import Config
from vault.errors import KeyMaterialError, NotFound
from vault.ids import encode_id
from vault.index import patient_ids, schema
from vault.index.engine import IndexEngine, IndexTxn, KeyWatch
from vault.keys.base import KeyProvider, key_version_of
from vault.keys.cache import DekCache
from vault.metadata import format_timestamp
from vault.metrics import Metrics

log = logging.getLogger(__name__)

# Keys unwrapped with a lone miss from a remote KMS: the records that follow it (``_read_ahead``).
READ_AHEAD = 32


class WrapBelowFloor(Exception):
    """A data key wrapped under a KEK version that a retirement has begun to destroy: the
    writer wraps it again under the current version and commits again."""


def check_key_floor(txn: IndexTxn, wrapped: str) -> None:
    """Inside a commit: raise ``WrapBelowFloor`` if ``wrapped`` is below the key floor.

    Retirement raises the floor (``meta`` ``key_versions``) in the index *before* it destroys
    the old versions at the KMS, so every commit either lands before the floor (and is counted
    and rewrapped by the retirement) or sees it (and rewraps first): an acknowledged record
    never carries a key that is about to become undecryptable.
    """
    versions = txn.get_doc(schema.DB_META, schema.META_KEY_VERSIONS)
    if versions is not None and key_version_of(wrapped) < versions.get("floor", 0):
        raise WrapBelowFloor()


def key_generation(txn: IndexTxn) -> int:
    doc = txn.get_doc(schema.DB_META, schema.META_KEY_GENERATION)
    return 0 if doc is None else int(doc.get("n", 0))


def versions_generation(txn: IndexTxn) -> int:
    """The key generation of the last change of KEK versions (rotation, retirement): what
    empties DEK pools and unwrapped tenant keys, which a shred leaves alone."""
    doc = txn.get_doc(schema.DB_META, schema.META_KEY_GENERATION)
    return 0 if doc is None else int(doc.get("versions", 0))


def bump_key_generation(txn: IndexTxn, *, versions: bool = False) -> int:
    """Inside a shred or key change commit: every process's cached keys are stale from now on;
    ``versions``: the KEK versions changed too (pre-wrapped keys and tenant keys are stale).
    Returns the new generation."""
    doc = txn.get_doc(schema.DB_META, schema.META_KEY_GENERATION) or {}
    generation = int(doc.get("n", 0)) + 1
    changed = generation if versions else int(doc.get("versions", 0))
    txn.put_doc(schema.DB_META, schema.META_KEY_GENERATION, {"n": generation, "versions": changed})
    txn.notify_key_change(generation)  # delivered to the other daemons only if this commits
    return generation


class DataKeys:
    """Unwrapped DEKs of records, through the cache; one batched KMS call for the misses."""

    def __init__(self, index: IndexEngine, keys: KeyProvider, cache: DekCache, metrics: Metrics) -> None:
        self._index = index
        self._keys = keys
        self._cache = cache
        self._metrics = metrics
        self._generation = index.read(key_generation)
        self._versions = index.read(versions_generation)
        # Generations this process's own shreds made, whose records ``forget`` dropped one by
        # one: seeing only those, the rest of the cache stays.
        self._own: set[int] = set()
        self._on_stale: list[Callable[[], None]] = []
        self._watch: KeyWatch | None = None
        # Keys a read-ahead batch is unwrapping now (record id -> its DEK, or None if it failed).
        self._in_flight: dict[bytes, asyncio.Future[bytes | None]] = {}

    def watch(self) -> None:
        """In a daemon (on its event loop): follow key changes with the engine's watch, where
        it has one, instead of reading the generation on every use, and drop the caches as soon
        as another process's shred or key change is announced."""
        if self._watch is not None:
            return
        loop = asyncio.get_running_loop()

        def changed(_generation: int) -> None:
            loop.call_soon_threadsafe(self.drop_if_stale)

        self._watch = self._index.watch_key_changes(lambda: self._index.read(key_generation), changed,
                                                    initial=self._generation)

    def _current_generation(self) -> int:
        if self._watch is not None:
            return self._watch.generation
        return self._index.read(key_generation)

    def _count_cached(self) -> None:
        self._metrics.dek_cache_keys.set(len(self._cache))

    def on_stale(self, drop: Callable[[], None]) -> None:
        """Also call ``drop`` when the KEK versions change (a DEK pool, tenant keys): a shred
        empties the DEK cache only, since fresh keys and tenant keys do not belong to it."""
        self._on_stale.append(drop)

    def drop_if_stale(self) -> int:
        """Empty this process's key caches if a shred or key change committed since the last
        look (by any process); returns the generation seen."""
        generation = self._current_generation()
        if generation != self._generation:
            own = all(g in self._own for g in range(self._generation + 1, generation + 1))
            self._own = {g for g in self._own if g > generation}
            self._generation = generation
            if not own:
                self._cache.clear()  # also makes unwraps in flight uncacheable
                versions = self._index.read(versions_generation)
                if versions != self._versions:  # a rotation or retirement, not only shreds
                    self._versions = versions
                    for drop in self._on_stale:
                        drop()
                self._count_cached()
        return generation

    async def unwrap(
        self, record_ids: list[bytes], *, cache: bool = True, wrapped: dict[bytes, str] | None = None,
    ) -> dict[bytes, bytes]:
        """DEKs by record id; a record whose key is gone or will not unwrap is left out.

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
            self.drop_if_stale()
            get = self._cache.get
            for rid in record_ids:
                dek = get(rid)
                if dek is None:
                    missing.append(rid)
                else:
                    found[rid] = dek
            # Counted once per call, not per key: a timeline is 20 keys and labels() is a lock.
            if found:
                self._metrics.dek_cache.labels("hit").inc(len(found))
            if missing:
                self._metrics.dek_cache.labels("miss").inc(len(missing))
        else:
            missing = list(record_ids)
        if missing:
            if wrapped is not None and all(rid in wrapped for rid in missing):
                keys: list[str | None] = [wrapped[rid] for rid in missing]
            else:
                keys = self._index.read(lambda t: [t.get_dek(rid) for rid in missing])
            present = [(rid, w) for rid, w in zip(missing, keys) if w is not None]
            ahead: list[tuple[bytes, str]] = []
            if cache and len(present) == 1:
                pending = self._in_flight.get(present[0][0])
                if pending is not None:
                    # Another request's batch is unwrapping this key already: one KMS call.
                    dek = await asyncio.shield(pending)
                    if dek is not None:
                        found[present[0][0]] = dek
                        return found
                    # That batch failed (the KMS is down): try on our own, and fail on our own.
                ahead = self._read_ahead(present[0][0])
            generation = self._cache.generation  # see DekCache: a shred during the unwrap wins
            batch = present + ahead
            owned = self._announce(batch) if ahead else {}
            results: list[bytes | KeyMaterialError] | None = None
            try:
                results = await self._keys.unwrap_data_keys([w for _, w in batch])
            finally:
                if owned:
                    self._settle(owned, batch, results)
            for (rid, _), result in zip(present, results):
                if isinstance(result, KeyMaterialError):
                    log.error("data key of record %s could not be unwrapped", encode_id(rid))
                    continue
                if cache:
                    self._cache.put(rid, result, since=generation)
                found[rid] = result
            for (rid, _), result in zip(ahead, results[len(present):]):
                if not isinstance(result, KeyMaterialError):  # a neighbour's damage is its own reader's to report
                    self._cache.put(rid, result, since=generation)
            if cache:
                self._count_cached()
        return found

    def _announce(self, batch: list[tuple[bytes, str]]) -> dict[bytes, asyncio.Future[bytes | None]]:
        """Register a batch's keys as being unwrapped, for concurrent misses to wait for."""
        loop = asyncio.get_running_loop()
        owned = {rid: loop.create_future() for rid, _ in batch if rid not in self._in_flight}
        self._in_flight.update(owned)
        return owned

    def _settle(self, owned: dict[bytes, asyncio.Future[bytes | None]], batch: list[tuple[bytes, str]],
                results: list[bytes | KeyMaterialError] | None) -> None:
        """Hand the batch's outcome to the requests waiting on its keys (None: nothing for
        them, they unwrap on their own) and unregister it."""
        outcome = dict(zip((rid for rid, _ in batch), results)) if results is not None else {}
        for rid, future in owned.items():
            if self._in_flight.get(rid) is future:
                del self._in_flight[rid]
            dek = outcome.get(rid)
            future.set_result(dek if isinstance(dek, bytes) else None)

    def _read_ahead(self, record_id: bytes) -> list[tuple[bytes, str]]:
        """With a remote KMS, the wrapped keys of up to ``READ_AHEAD`` records that follow
        ``record_id`` (ids sort by creation time: the rest of a session, what a viewer opens
        next) and are not cached, to unwrap in the same KMS call as the one asked for.

        Why: each worker of ``serve --workers`` has its own cache, so an image uploaded
        through one worker and read through another is a miss there, and a KMS round trip
        per image read. One batch unwraps the neighbours for the price of one call. The local
        keyring unwraps in-process, so it gains nothing and reads nothing ahead."""
        if not self._keys.prefers_pooling or READ_AHEAD <= 0:
            return []
        cached = self._cache.peek

        def scan(txn: IndexTxn) -> list[tuple[bytes, str]]:
            out = []
            for rid, value in itertools.islice(txn.scan_items(schema.DB_DEKS, record_id + b"\x00"), READ_AHEAD):
                if not cached(rid):
                    out.append((rid, value.decode()))
            return out

        return self._index.read(scan)

    async def unwrap_one(self, record_id: bytes, wrapped: str | None = None) -> bytes:
        """One record's DEK; ``wrapped``: its wrapped key, read with the record (same rule as
        ``unwrap``). ``NotFound`` if the key is gone (a shred, possibly by another process,
        committed since the caller read the record: the record is gone, not broken), else
        ``KeyMaterialError``."""
        dek = (await self.unwrap([record_id], wrapped=None if wrapped is None else {record_id: wrapped})).get(record_id)
        if dek is None:
            if self._index.read(lambda t: t.get_dek(record_id)) is None:
                raise NotFound()
            raise KeyMaterialError()
        return dek

    def remember(self, record_id: bytes, dek: bytes) -> None:
        """Cache the DEK of a record just written (its first read needs no KMS call)."""
        self._cache.put(record_id, dek)
        self._count_cached()

    def forget(self, record_ids: list[bytes], *, generations: Sequence[int] = ()) -> None:
        """Drop shredded records' DEKs (and make in-flight unwraps of them uncacheable);
        ``generations``: the key generations the shred's commits made."""
        for rid in record_ids:
            self._cache.drop(rid)
        self._count_cached()
        self._own.update(g for g in generations if g > self._generation)


class IndexKeyChanged(Exception):
    """A tenant's blind-index key was replaced between computing a patient HMAC and committing
    it (a shred epoch): the writer recomputes under the new key and commits again."""


@dataclass(frozen=True)
class TenantKey:
    key: bytes = field(repr=False)
    wrapped: str  # as stored in the ``tenants`` document: identifies this key


@dataclass(frozen=True)
class PatientLookup:
    hmacs: list[bytes]  # the patient's blind-index values under every read key, newest first
    scheme: str  # the tenant's patient-id scheme in use


class TenantKeys:
    """Each tenant's blind-index key: 32 random bytes, created on first use, stored only
    wrapped by the KEK (``tenants`` database), held unwrapped in memory once opened.

    A shred epoch replaces the key: it stores the replacement as ``next_index_key``, moves every
    live record's patient HMAC to it, then makes it the ``index_key``. Meanwhile writes use the
    replacement and reads look under both. The ``tenants`` document is read on every call (one
    small LMDB read), so a replacement made by another process (the CLI) is seen at once; only
    unwrapping is cached. A writer commits its HMAC only if the key it used is still the write
    key (``check_write_key`` inside the commit), so no record is ever indexed under a key that
    the epoch has already left behind.
    """

    def __init__(self, index: IndexEngine, keys: KeyProvider, clock: Callable[[], datetime]) -> None:
        self._index = index
        self._keys = keys
        self._clock = clock
        self._unwrapped: dict[str, bytes] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _doc(self, tenant: str) -> dict[str, Any]:
        key = tenant.encode()
        doc = self._index.read(lambda t: t.get_doc(schema.DB_TENANTS, key))
        if doc is not None:
            return doc
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            doc = self._index.read(lambda t: t.get_doc(schema.DB_TENANTS, key))
            if doc is not None:
                return doc
            wrapped = await self._keys.wrap_data_key(secrets.token_bytes(32))
            candidate = {"index_key": wrapped, "created_at": format_timestamp(self._clock())}

            def put_if_absent(txn: IndexTxn) -> dict[str, Any]:
                existing = txn.get_doc(schema.DB_TENANTS, key)
                if existing is not None:
                    return existing
                txn.put_doc(schema.DB_TENANTS, key, candidate)
                return candidate

            return await self._index.write(put_if_absent)

    async def _open(self, wrapped: str) -> bytes:
        key = self._unwrapped.get(wrapped)
        if key is None:
            key = await self._keys.unwrap_data_key(wrapped)
            self._unwrapped[wrapped] = key
        return key

    async def write_key(self, tenant: str) -> TenantKey:
        """The key new patient HMACs are computed under."""
        doc = await self._doc(tenant)
        wrapped = doc.get("next_index_key") or doc["index_key"]
        return TenantKey(await self._open(wrapped), wrapped)

    async def read_keys(self, tenant: str) -> list[bytes]:
        """Every key a live record's patient HMAC may be under (two while an epoch replaces it)."""
        doc = await self._doc(tenant)
        names = [doc["next_index_key"]] if doc.get("next_index_key") else []
        return [await self._open(w) for w in names + [doc["index_key"]]]

    async def get(self, tenant: str) -> bytes:
        return (await self.write_key(tenant)).key

    def clear(self) -> None:
        """Forget every unwrapped key: the next use unwraps it again through the KMS."""
        self._unwrapped.clear()

    async def scheme(self, tenant: str, config: Config) -> str:
        """The patient-id scheme the tenant's blind index is written under (recorded on first
        use, ``vault/index/patient_ids.py``)."""
        wanted = patient_ids.settings(config.patient_id_scheme, config.patient_id_scheme_by_tenant)
        return (await patient_ids.tenant_scheme(self._index, tenant, wanted)).in_use

    async def _write_scheme(self, tenant: str, config: Config) -> str:
        # During a shred epoch that also switches the tenant's scheme, new HMACs follow the
        # replacement key *and* the scheme that comes with it.
        doc = await self._doc(tenant)
        if doc.get("next_index_key") and doc.get("next_patient_id_scheme"):
            return str(doc["next_patient_id_scheme"])
        return await self.scheme(tenant, config)

    async def patient_hmac(self, tenant: str, patient_id: str, config: Config, key: TenantKey | None = None) -> bytes:
        """The blind-index value of a patient id in a tenant, under the write key (or ``key``,
        a write key the caller holds). Every patient HMAC the service writes is computed here;
        an id the scheme refuses is ``invalid_request`` naming ``patient_id``."""
        index_key = key if key is not None else await self.write_key(tenant)
        return patient_ids.patient_hmac(index_key.key, await self._write_scheme(tenant, config), patient_id)

    async def patient_hmacs(self, tenant: str, patient_id: str, config: Config) -> list[bytes]:
        """The patient's HMAC under every read key (and its scheme): the prefixes a lookup scans."""
        return (await self.patient_lookup(tenant, patient_id, config)).hmacs

    async def patient_lookup(self, tenant: str, patient_id: str, config: Config) -> PatientLookup:
        """``patient_hmacs`` with the scheme in use, from one index read of the tenant's
        document and the scheme (a single statement on PostgreSQL) once the tenant exists."""
        key = tenant.encode()
        wanted = patient_ids.settings(config.patient_id_scheme, config.patient_id_scheme_by_tenant)

        def look(txn: IndexTxn) -> tuple[dict[str, Any] | None, patient_ids.TenantScheme | None]:
            txn.prefetch(patient_ids.scheme_keys(tenant))
            return txn.get_doc(schema.DB_TENANTS, key), patient_ids.look_up(txn, tenant, wanted)

        doc, found = self._index.read(look)
        if doc is None:
            doc = await self._doc(tenant)
        current = (await patient_ids.tenant_scheme(self._index, tenant, wanted, found)).in_use
        out = []
        if doc.get("next_index_key"):
            scheme = doc.get("next_patient_id_scheme") or current
            out.append(patient_ids.patient_hmac(await self._open(doc["next_index_key"]), scheme, patient_id))
        out.append(patient_ids.patient_hmac(await self._open(doc["index_key"]), current, patient_id))
        return PatientLookup(out, current)

    @staticmethod
    def check_write_key(txn: IndexTxn, tenant: str, wrapped: str) -> None:
        """Inside a commit: raise ``IndexKeyChanged`` unless ``wrapped`` is still the write key."""
        doc = txn.get_doc(schema.DB_TENANTS, tenant.encode())
        if doc is None or (doc.get("next_index_key") or doc["index_key"]) != wrapped:
            raise IndexKeyChanged()
