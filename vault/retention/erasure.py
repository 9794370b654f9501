"""Patient-level erasure (GDPR Art. 17) and legal hold, for the DPO.

Erasure shreds every record of one patient in one go through the shredder (batched, group
committed) and reports each record it refused: on legal hold (never overridden here: a hold is
placed because something must *not* be destroyed, and releasing it is a separate, audited
decision), or still under a retention obligation unless the request overrides it (which needs
a reason). The trail gets one ``erase`` entry listing the shredded ids, the refusals, whether
retention was overridden and the SHA-256 of the reason (its text may name the patient).

A patient-wide legal hold sets or clears ``legal_hold`` on every record of the patient in one
group commit and reports how many records changed state.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from vault.audit.hooks import note, reason_mac
from vault.auth import Action, Principal
from vault.ids import encode_id
from vault.index.lmdb import IndexTxn
from vault.metadata import format_timestamp
from vault.patients import ErasureRequest, HoldRequest, patient_record_ids
from vault.retention.shredder import BATCH, NOT_FOUND, SHREDDED, ShredRule, shred_records

if TYPE_CHECKING:
    from vault.service import Vault


@dataclass(frozen=True)
class Refusal:
    id: str
    code: str  # legal_hold | retention_obligation

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "code": self.code}


@dataclass(frozen=True)
class ErasureReport:
    shredded: int
    refused: tuple[Refusal, ...]
    seconds: float
    audit_ids: tuple[str, ...]  # the shredded records

    def to_json(self) -> dict[str, Any]:
        return {"shredded": self.shredded, "refused": [r.to_json() for r in self.refused], "seconds": round(self.seconds, 4)}


@dataclass(frozen=True)
class HoldReport:
    updated: int
    audit_ids: tuple[str, ...]  # the records whose hold state changed

    def to_json(self) -> dict[str, int]:
        return {"updated": self.updated}


async def erase_patient(vault: Vault, principal: Principal, request: ErasureRequest) -> ErasureReport:
    principal.require(Action.ERASE_PATIENT)
    if request.override_retention:
        principal.require(Action.OVERRIDE_RETENTION)
    started = time.perf_counter()
    ids = await patient_record_ids(vault, principal.tenant, request.patient_id)
    rule = ShredRule(vault.clock(), principal.tenant, override_retention=request.override_retention)
    decisions = await shred_records(vault, ids, rule)
    shredded = tuple(encode_id(d.id) for d in decisions if d.code is SHREDDED)
    # NOT_FOUND: shredded by someone else since the scan; nothing of it is left to report.
    refused = tuple(Refusal(encode_id(d.id), d.code) for d in decisions if d.code not in (SHREDDED, NOT_FOUND))
    seconds = time.perf_counter() - started
    note(
        override_retention=request.override_retention,
        reason_hmac=reason_mac(await vault._tenant_index_key(principal.tenant), request.reason),
        refused=[r.to_json() for r in refused],
    )
    return ErasureReport(len(shredded), refused, seconds, shredded)


async def set_patient_hold(vault: Vault, principal: Principal, request: HoldRequest) -> HoldReport:
    principal.require(Action.LEGAL_HOLD)
    ids = await patient_record_ids(vault, principal.tenant, request.patient_id)
    stamp = format_timestamp(vault.clock())
    tenant = principal.tenant

    def apply(batch: list[bytes]):  # type: ignore[no-untyped-def]
        def set_hold(txn: IndexTxn) -> list[bytes]:
            changed = []
            for rid in batch:
                latest = txn.get_record(rid)
                if latest is None or latest.tenant != tenant or latest.metadata.legal_hold == request.hold:
                    continue
                new = latest.with_changes(metadata=replace(latest.metadata, legal_hold=request.hold), updated_at=stamp)
                txn.put_record(new, latest)
                changed.append(rid)
            return changed

        return set_hold

    results = await asyncio.gather(*(vault.index.write(apply(ids[i:i + BATCH])) for i in range(0, len(ids), BATCH)))
    changed = tuple(encode_id(rid) for batch in results for rid in batch)
    reason = reason_mac(await vault._tenant_index_key(principal.tenant), request.reason)
    note(hold=request.hold, reason_hmac=reason, matched=len(ids))
    return HoldReport(len(changed), changed)
