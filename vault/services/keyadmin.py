"""Key administration: status, rotation, background rewrap and retirement (the shred epoch).

``rotate`` asks the provider for a new KEK version and records a rewrap job in the ``jobs``
database. ``run`` walks the ``deks`` database in key order, rewraps every DEK (and every tenant
index key) still on an older version in provider batches, and stores each rewrapped key with a
compare-and-set: a record shredded, or re-uploaded, while its key was at the KMS keeps whatever
the index holds now. The cursor is saved with every batch, so a killed daemon resumes where it
stopped. Rewrap never reads or writes a blob.

``retire`` refuses while any wrapped key is older than the current version, then makes the old
versions unusable at the provider: from then on a wrapped DEK in an old backup, a free LMDB
page or a stolen copy is undecryptable, which is what turns deletion into shredding.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from vault.errors import KeyMaterialError, RewrapIncomplete
from vault.index import schema
from vault.index.lmdb import IndexTxn
from vault.keys.base import KeyStatus, key_version_of
from vault.metadata import format_timestamp
from vault.services.context import ServiceContext

log = logging.getLogger(__name__)
JOB_KEY = schema.JOB_REWRAP


@dataclass(frozen=True)
class RewrapState:
    state: str  # "idle" | "running" | "done"
    target_version: int
    cursor: str | None  # hex of the last record id handled
    rewrapped: int
    failed: int
    started_at: str | None
    finished_at: str | None

    @classmethod
    def idle(cls) -> RewrapState:
        return cls("idle", 0, None, 0, 0, None, None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KeyReport:
    status: KeyStatus
    dek_counts: dict[int, int]  # KEK version -> wrapped DEKs (records) on it
    tenant_key_counts: dict[int, int]
    job: RewrapState

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.status.provider,
            "key_name": self.status.key_name,
            "current_version": self.status.current_version,
            "min_decryption_version": self.status.min_decryption_version,
            "versions": list(self.status.versions),
            "dek_counts": {str(k): v for k, v in sorted(self.dek_counts.items())},
            "tenant_key_counts": {str(k): v for k, v in sorted(self.tenant_key_counts.items())},
            "rewrap": self.job.to_json(),
        }


def _now() -> str:
    return format_timestamp(datetime.now(timezone.utc))


class KeyAdmin:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context
        self._index = context.index
        self._keys = context.keys
        self._batch = context.config.rewrap_batch
        self._pause = context.config.rewrap_pause
        self._lock = asyncio.Lock()

    def _on_progress(self, done: int, total: int) -> None:
        self._context.metrics.rewrap_progress.set(1.0 if total == 0 else done / total)

    def job(self) -> RewrapState:
        doc = self._index.read(lambda t: t.get_doc(schema.DB_JOBS, JOB_KEY))
        return RewrapState.idle() if doc is None else RewrapState(**doc)

    async def _save(self, state: RewrapState) -> None:
        await self._index.write(lambda t: t.put_doc(schema.DB_JOBS, JOB_KEY, state.to_json()))

    def counts(self) -> tuple[dict[int, int], dict[int, int]]:
        def scan(txn: IndexTxn) -> tuple[dict[int, int], dict[int, int]]:
            deks = Counter(key_version_of(w) for _, w in txn.iter_deks())
            tenants = Counter(key_version_of(doc["index_key"]) for _, doc in txn.iter_docs(schema.DB_TENANTS))
            return dict(deks), dict(tenants)

        return self._index.read(scan)

    async def report(self) -> KeyReport:
        status = await self._keys.status()
        deks, tenants = self.counts()
        return KeyReport(status, deks, tenants, self.job())

    async def rotate(self) -> RewrapState:
        """New KEK version; new uploads use it at once; old DEKs move over in ``run``."""
        version = await self._keys.rotate()
        state = RewrapState("running", version, None, 0, 0, _now(), None)
        await self._save(state)
        if self._context.dek_pool is not None:
            self._context.dek_pool.clear()  # pre-wrapped keys are on the old version
        self._context.metrics.rewrap_progress.set(0.0)
        log.info("key rotated to version %d; rewrap started", version)
        return state

    def remaining(self, target: int) -> int:
        deks, tenants = self.counts()
        return sum(n for v, n in deks.items() if v < target) + sum(n for v, n in tenants.items() if v < target)

    async def run(self, progress: Callable[[int, int], None] | None = None) -> RewrapState:
        """Rewrap until no wrapped key is older than the job's target. Resumable; idempotent."""
        async with self._lock:
            state = self.job()
            if state.state != "running":
                return state
            target = state.target_version
            total = state.rewrapped + self.remaining(target)
            report = progress or self._on_progress
            await self._rewrap_tenant_keys(target)
            cursor = bytes.fromhex(state.cursor) if state.cursor else None
            rewrapped, failed = state.rewrapped, state.failed
            while True:
                def next_batch(txn: IndexTxn) -> list[tuple[bytes, str]]:
                    batch = []
                    for rid, wrapped in txn.iter_deks(cursor):
                        batch.append((rid, wrapped))
                        if len(batch) == self._batch:
                            break
                    return batch

                batch = self._index.read(next_batch)
                if not batch:
                    break
                cursor = batch[-1][0]
                stale = [(rid, w) for rid, w in batch if key_version_of(w) < target]
                if stale:
                    results = await self._keys.rewrap_data_keys([w for _, w in stale])
                    updates = []
                    for (rid, old), new in zip(stale, results):
                        if isinstance(new, KeyMaterialError):
                            failed += 1
                            log.error("rewrap failed for one record's data key (version %d)", key_version_of(old))
                        else:
                            updates.append((rid, old, new))

                    def store(txn: IndexTxn, updates=updates, cursor=cursor) -> int:
                        done = 0
                        for rid, old, new in updates:
                            if txn.get_dek(rid) == old:  # compare-and-set: shredded keys stay shredded
                                txn.put_dek(rid, new)
                                done += 1
                        current = txn.get_doc(schema.DB_JOBS, JOB_KEY) or {}
                        current.update(cursor=cursor.hex(), rewrapped=current.get("rewrapped", 0) + done)
                        txn.put_doc(schema.DB_JOBS, JOB_KEY, current)
                        return done

                    rewrapped += await self._index.write(store)
                else:
                    await self._index.write(lambda t, c=cursor: _save_cursor(t, c))
                if report is not None:
                    report(rewrapped, total)
                if self._pause:
                    await asyncio.sleep(self._pause)
            final = RewrapState("done", target, None, rewrapped, failed, state.started_at, _now())
            if failed:
                final = RewrapState("running", target, None, rewrapped, failed, state.started_at, None)
            await self._save(final)
            log.info("rewrap to version %d finished: %d rewrapped, %d failed", target, rewrapped, failed)
            return final

    async def _rewrap_tenant_keys(self, target: int) -> None:
        docs = self._index.read(lambda t: list(t.iter_docs(schema.DB_TENANTS)))
        stale = [(key, doc) for key, doc in docs if key_version_of(doc["index_key"]) < target]
        if not stale:
            return
        results = await self._keys.rewrap_data_keys([doc["index_key"] for _, doc in stale])

        def store(txn: IndexTxn) -> None:
            for (key, doc), new in zip(stale, results):
                if isinstance(new, KeyMaterialError):
                    continue
                current = txn.get_doc(schema.DB_TENANTS, key)
                if current is not None and current["index_key"] == doc["index_key"]:
                    txn.put_doc(schema.DB_TENANTS, key, {**current, "index_key": new})

        await self._index.write(store)

    async def retire(self) -> KeyStatus:
        """Make every KEK version below the current one unusable; 409 while any key is older."""
        status = await self._keys.status()
        current = status.current_version
        if self.remaining(current):
            raise RewrapIncomplete()
        await self._keys.retire(current)
        log.info("key versions below %d retired", current)
        return await self._keys.status()


def _save_cursor(txn: IndexTxn, cursor: bytes) -> None:
    current = txn.get_doc(schema.DB_JOBS, JOB_KEY) or {}
    current["cursor"] = cursor.hex()
    txn.put_doc(schema.DB_JOBS, JOB_KEY, current)
