"""Crypto-shredding of many records at once: the one mechanism behind delete, erase and sweep.

For each record, in one LMDB operation per batch: re-read it, decide (legal hold, retention
obligation, expiry) against its *current* state, and delete its wrapped DEK, record and index
entries and append ``time || id`` to the shred log. A batch of up to ``BATCH`` records is one
nested transaction, and the batches of one call are submitted together, so they share group
commits: erasing 1,000 records costs one or two fsyncs, not 1,000. Then the DEK cache entries
are dropped and the blobs deleted (best effort, concurrently; ``gc`` finishes what fails).
From the commit on, the ciphertext is unreadable through the service: its key is gone.

Decisions are made inside the write transaction, so a legal hold placed, or a retention date
extended, while a sweep or an erasure is running is honoured.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from vault.errors import ImageVaultError, IndexTampered, LegalHoldActive, NotFound, RetentionObligation
from vault.ids import encode_id
from vault.index import schema
from vault.index.engine import IndexTxn
from vault.services.context import ServiceContext
from vault.services.datakeys import bump_key_generation
from vault.store.backends.base import blob_names

log = logging.getLogger(__name__)
BATCH = 512
BLOB_DELETES_IN_FLIGHT = 32

SHREDDED = None
NOT_FOUND = "not_found"
LEGAL_HOLD = "legal_hold"
RETENTION_OBLIGATION = "retention_obligation"
NOT_DUE = "not_due"
TAMPERED = IndexTampered.code  # the record failed its index MAC: nothing about it can be trusted


@dataclass(frozen=True)
class ShredRule:
    """What may be shredded. Legal hold always wins; nothing here can override it."""

    now: datetime
    tenant: str | None  # only records of this tenant (None: any, for the sweeper)
    override_retention: bool = False  # a DPO's override of a retention obligation
    expired_only: bool = False  # the sweeper: only records whose retain_until has passed


@dataclass(frozen=True)
class ShredDecision:
    id: bytes
    tenant: str | None
    code: str | None  # None: shredded; else why not (an API error code, or "not_due")


def refusal_error(code: str | None) -> ImageVaultError:
    """The API error for a refusal code (single-record delete raises it)."""
    if code == TAMPERED:
        return IndexTampered("record", b"")
    return {LEGAL_HOLD: LegalHoldActive, RETENTION_OBLIGATION: RetentionObligation}.get(code or "", NotFound)()


def _batch_job(ids: Sequence[bytes], rule: ShredRule, generations: list[int]):  # type: ignore[no-untyped-def]
    def shred(txn: IndexTxn) -> list[ShredDecision]:
        decisions: list[ShredDecision] = []
        removed: Counter[str] = Counter()
        removed_bytes: Counter[str] = Counter()
        for rid in ids:
            try:
                latest = txn.get_record(rid)
            except IndexTampered:
                # Its retention, hold or tenant may be forged: a sweep or an erasure must not
                # destroy it on that word. Refused, counted (by the seal) and reported.
                decisions.append(ShredDecision(rid, None, TAMPERED))
                continue
            if latest is None or (rule.tenant is not None and latest.tenant != rule.tenant):
                decisions.append(ShredDecision(rid, None, NOT_FOUND))
                continue
            until = latest.retain_until_dt()
            if latest.metadata.legal_hold:
                code: str | None = LEGAL_HOLD
            elif rule.expired_only and (until is None or until > rule.now):
                code = NOT_DUE
            elif until is not None and until > rule.now and not rule.override_retention:
                code = RETENTION_OBLIGATION
            else:
                code = SHREDDED
                txn.delete_record(latest)
                txn.put_marker(schema.DB_SHREDLOG, schema.shredlog_key(rule.now, latest.id))
                removed[latest.tenant] += 1
                removed_bytes[latest.tenant] += latest.size
            decisions.append(ShredDecision(rid, latest.tenant, code))
        for tenant, count in removed.items():
            txn.bump_stats(tenant, -count, -removed_bytes[tenant])
        if removed:
            # Other processes drop their cached keys before their next use of one.
            generations.append(bump_key_generation(txn))
        return decisions

    return shred


class Shredder:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def shred(self, ids: Sequence[bytes], rule: ShredRule) -> list[ShredDecision]:
        """Decide and shred ``ids`` under ``rule``; one decision per id, in order."""
        context = self._context
        batches = [list(ids[i:i + BATCH]) for i in range(0, len(ids), BATCH)]
        generations: list[int] = []
        results = await asyncio.gather(*(context.index.write(_batch_job(batch, rule, generations))
                                         for batch in batches))
        decisions = [d for batch in results for d in batch]
        shredded = [d.id for d in decisions if d.code is SHREDDED]
        context.data_keys.forget(shredded, generations=generations)
        if shredded:
            context.metrics.shredded.inc(len(shredded))
            context.metrics.changed_records(-len(shredded))
            await self.delete_blobs(shredded)
        return decisions

    async def delete_blobs(self, ids: Sequence[bytes]) -> None:
        """Best effort: the keys are already gone, so a blob left behind is unreadable; ``gc``
        removes it later."""
        gate = asyncio.Semaphore(BLOB_DELETES_IN_FLIGHT)
        backend = self._context.backend

        async def one(blob_id: str) -> None:
            async with gate:
                try:
                    await backend.delete(blob_id)
                except Exception:  # noqa: BLE001 - best effort, see above
                    log.warning("blob delete failed after shred; gc will remove it")

        # The original and its renditions (sealed under keys derived from the same DEK).
        names = [name for rid in ids for name in blob_names(encode_id(rid))]
        await asyncio.gather(*(one(name) for name in names))
