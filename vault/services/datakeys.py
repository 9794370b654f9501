"""Access to unwrapped keys: record data keys (through the DEK cache) and tenant index keys.

Every service that decrypts goes through here, so the cache, its drop generation and the
batching of KMS calls are applied the same way for reads, searches, exports and scrubs.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

from vault.config import Config
from vault.errors import KeyMaterialError
from vault.ids import encode_id
from vault.index import patient_ids, schema
from vault.index.lmdb import Index, IndexTxn
from vault.keys.base import KeyProvider
from vault.keys.cache import DekCache
from vault.metadata import format_timestamp
from vault.metrics import Metrics

log = logging.getLogger(__name__)


class DataKeys:
    """Unwrapped DEKs of records, through the cache; one batched KMS call for the misses."""

    def __init__(self, index: Index, keys: KeyProvider, cache: DekCache, metrics: Metrics) -> None:
        self._index = index
        self._keys = keys
        self._cache = cache
        self._metrics = metrics

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
            generation = self._cache.generation  # see DekCache: a shred during the unwrap wins
            results = await self._keys.unwrap_data_keys([w for _, w in present])
            for (rid, _), result in zip(present, results):
                if isinstance(result, KeyMaterialError):
                    log.error("data key of record %s could not be unwrapped", encode_id(rid))
                    continue
                if cache:
                    self._cache.put(rid, result, since=generation)
                found[rid] = result
        return found

    async def unwrap_one(self, record_id: bytes) -> bytes:
        """One record's DEK, or ``KeyMaterialError``."""
        dek = (await self.unwrap([record_id])).get(record_id)
        if dek is None:
            raise KeyMaterialError()
        return dek

    def remember(self, record_id: bytes, dek: bytes) -> None:
        """Cache the DEK of a record just written (its first read needs no KMS call)."""
        self._cache.put(record_id, dek)

    def forget(self, record_ids: list[bytes]) -> None:
        """Drop shredded records' DEKs (and make in-flight unwraps of them uncacheable)."""
        for rid in record_ids:
            self._cache.drop(rid)


class TenantKeys:
    """Each tenant's blind-index key: 32 random bytes, created on first use, stored only
    wrapped by the KEK (``tenants`` database), held unwrapped in memory once opened."""

    def __init__(self, index: Index, keys: KeyProvider, clock: Callable[[], datetime]) -> None:
        self._index = index
        self._keys = keys
        self._clock = clock
        self._open: dict[str, bytes] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, tenant: str) -> bytes:
        cached = self._open.get(tenant)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            if tenant in self._open:
                return self._open[tenant]
            key = tenant.encode()
            doc = self._index.read(lambda t: t.get_doc(schema.DB_TENANTS, key))
            if doc is None:
                fresh = secrets.token_bytes(32)
                wrapped = await self._keys.wrap_data_key(fresh)
                candidate = {"index_key": wrapped, "created_at": format_timestamp(self._clock())}

                def put_if_absent(txn: IndexTxn) -> dict[str, Any]:
                    existing = txn.get_doc(schema.DB_TENANTS, key)
                    if existing is not None:
                        return existing
                    txn.put_doc(schema.DB_TENANTS, key, candidate)
                    return candidate

                doc = await self._index.write(put_if_absent)
            index_key = await self._keys.unwrap_data_key(doc["index_key"])
            self._open[tenant] = index_key
            return index_key

    def clear(self) -> None:
        """Forget every unwrapped key: the next use unwraps it again through the KMS."""
        self._open.clear()

    async def patient_hmac(self, tenant: str, patient_id: str, config: Config) -> bytes:
        """The blind-index value of a patient id in a tenant. Every patient HMAC of the service
        is computed here, under the scheme the tenant's blind index uses (recorded on first use,
        ``vault/index/patient_ids.py``); an id the scheme refuses is ``invalid_request`` naming
        ``patient_id``."""
        index_key = await self.get(tenant)
        wanted = patient_ids.settings(config.patient_id_scheme, config.patient_id_scheme_by_tenant)
        scheme = await patient_ids.tenant_scheme(self._index, tenant, wanted)
        return patient_ids.patient_hmac(index_key, scheme.in_use, patient_id)
