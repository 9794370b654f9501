"""Everything about one patient, for the DPO: erasure (GDPR Art. 17), legal hold, and the
subject access export (Art. 15/20).

Every operation finds the patient's records through the tenant's blind index; the patient
identifier is used only to compute that HMAC (under the tenant's patient-id scheme) and, for an
erasure under the ``legacy`` scheme, to compare with the records' own sealed ids; it is never
logged, echoed or audited.

Erasure shreds every record of the patient through the shredder (batched, group committed) and
reports each record it refused: on legal hold (never overridden here: a hold is placed because
something must *not* be destroyed, and releasing it is a separate, audited decision), or still
under a retention obligation unless the request overrides it (which needs a reason). The trail
gets one ``erase`` entry listing the shredded ids, the refusals, whether retention was
overridden and an HMAC of the reason (its text may name the patient). Under ``legacy`` the
report and the entry also say whether the matched records store differently written patient
ids (``merged_ids``): that scheme's folding can make two patients one.

A patient-wide legal hold sets or clears ``legal_hold`` on every record of the patient in one
group commit and reports how many records changed state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from vault.audit.hooks import note, reason_mac
from vault.auth import Action, Principal
from vault.errors import BlobCorrupt, IndexTampered, KeyMaterialError
from vault.export import PatientExport, member_names
from vault.ids import encode_id
from vault.index import patient_ids, schema
from vault.index.engine import IndexTxn
from vault.index.records import StoredRecord
from vault.metadata import format_timestamp
from vault.patients import ErasureRequest, ExportRequest, HoldRequest
from vault.services.context import ServiceContext
from vault.services.idempotency import IdempotencyOutcomes
from vault.services.reading import RecordReader
from vault.services.shredding import BATCH, NOT_FOUND, SHREDDED, Shredder, ShredRule
from vault.store.format import derive_metadata_key
from vault.store.personal import open_personal


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
    merged_ids: bool | None = None  # see PatientService.merged_ids
    # The report of an earlier erasure with the same Idempotency-Key, not a new erasure.
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "shredded": self.shredded, "refused": [r.to_json() for r in self.refused], "seconds": round(self.seconds, 4),
        }
        if self.merged_ids is not None:
            out["merged_ids"] = self.merged_ids
        return out

    @classmethod
    def replay_of(cls, outcome: dict[str, Any]) -> ErasureReport:
        """The report an idempotency entry filed (``IdempotencyOutcomes.file_erasure``)."""
        report = outcome["report"]
        refused = tuple(Refusal(str(r["id"]), str(r["code"])) for r in report["refused"])
        return cls(int(report["shredded"]), refused, float(report["seconds"]),
                   tuple(str(i) for i in outcome["shredded"]), report.get("merged_ids"), replayed=True)


@dataclass(frozen=True)
class HoldReport:
    updated: int
    audit_ids: tuple[str, ...]  # the records whose hold state changed

    def to_json(self) -> dict[str, int]:
        return {"updated": self.updated}


class PatientService:
    def __init__(
        self, context: ServiceContext, reader: RecordReader, shredder: Shredder, outcomes: IdempotencyOutcomes,
    ) -> None:
        self._context = context
        self._reader = reader
        self._shredder = shredder
        self._outcomes = outcomes

    async def record_ids(self, tenant: str, patient_id: str) -> list[bytes]:
        """Ids of every record of one patient in one tenant, in capture order (blind index scan)."""
        context = self._context
        hmacs = await context.tenant_keys.patient_hmacs(tenant, patient_id, context.config)
        prefixes = [schema.patient_prefix(tenant, h) for h in hmacs]

        def scan(txn: IndexTxn) -> list[bytes]:
            keys = [k for prefix in prefixes
                    for k in txn.scan_keys(schema.DB_BY_PATIENT, prefix, prefix + b"\xff" * (schema.SUFFIX_LEN + 1))]
            return [schema.record_id_of(k) for k in sorted(keys, key=schema.suffix_of)]

        return context.index.read(scan)

    async def merged_ids(self, tenant: str, ids: list[bytes], patient_id: str) -> bool | None:
        """Under the ``legacy`` scheme, whether any of the patient's records stores its patient
        id written differently from ``patient_id``: that scheme's folding may have merged two
        patients. None under the other schemes. Compared on the sealed ids, decrypted here and
        never logged; a record that cannot be opened is not counted."""
        context = self._context
        if context.index.read(lambda t: patient_ids.recorded(t, tenant)) != patient_ids.LEGACY:
            return None
        stored = context.index.read(lambda t: [_authentic_or_none(t, rid) for rid in ids])
        present = [s for s in stored if s is not None and s.tenant == tenant]
        deks = await context.data_keys.unwrap([s.id for s in present], cache=False)
        for s in present:
            dek = deks.get(s.id)
            if dek is None:
                continue
            try:
                personal = open_personal(derive_metadata_key(dek, s.id), s.id, s.sealed)
            except BlobCorrupt:
                continue
            if not patient_ids.same_raw_id(personal.get("patient_id") or "", patient_id):
                return True
        return False

    async def erase(
        self, principal: Principal, request: ErasureRequest, *, idempotency_key: str | None = None,
    ) -> ErasureReport:
        """Erase one patient. With ``idempotency_key``: a repeat of an erasure already made
        with it gets that erasure's report (``ErasureReport.replayed``) and shreds nothing;
        the same key with another request is ``IdempotencyKeyMismatch``."""
        if request.override_retention:
            principal.require(Action.OVERRIDE_RETENTION)
        if idempotency_key is None:
            return await self._erase(principal, request)
        claim = await self._outcomes.claim_erasure(principal, idempotency_key, request.patient_id, request.reason,
                                                   request.override_retention)
        try:
            if claim.found is not None:
                note(idempotent_replay=True)
                return ErasureReport.replay_of(claim.found)
            report = await self._erase(principal, request)
            await self._outcomes.file_erasure(claim, report.to_json(), report.audit_ids)
            return report
        finally:
            self._outcomes.release(claim)

    async def _erase(self, principal: Principal, request: ErasureRequest) -> ErasureReport:
        started = time.perf_counter()
        ids = await self.record_ids(principal.tenant, request.patient_id)
        merged = await self.merged_ids(principal.tenant, ids, request.patient_id)  # before the keys are gone
        rule = ShredRule(self._context.clock(), principal.tenant, override_retention=request.override_retention)
        decisions = await self._shredder.shred(ids, rule)
        shredded = tuple(encode_id(d.id) for d in decisions if d.code is SHREDDED)
        # NOT_FOUND: shredded by someone else since the scan; nothing of it is left to report.
        refused = tuple(Refusal(encode_id(d.id), d.code) for d in decisions if d.code not in (SHREDDED, NOT_FOUND))
        seconds = time.perf_counter() - started
        note(
            override_retention=request.override_retention,
            reason_hmac=reason_mac(await self._context.tenant_keys.get(principal.tenant), request.reason),
            refused=[r.to_json() for r in refused],
        )
        if merged is not None:
            note(merged_ids=merged)
        return ErasureReport(len(shredded), refused, seconds, shredded, merged)

    async def set_hold(self, principal: Principal, request: HoldRequest) -> HoldReport:
        context = self._context
        ids = await self.record_ids(principal.tenant, request.patient_id)
        stamp = format_timestamp(context.clock())
        tenant = principal.tenant

        def apply(batch: list[bytes]) -> Callable[[IndexTxn], list[bytes]]:
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

        results = await asyncio.gather(*(context.index.write(apply(ids[i:i + BATCH])) for i in range(0, len(ids), BATCH)))
        changed = tuple(encode_id(rid) for batch in results for rid in batch)
        reason = reason_mac(await context.tenant_keys.get(principal.tenant), request.reason)
        note(hold=request.hold, reason_hmac=reason, matched=len(ids))
        return HoldReport(len(changed), changed)

    async def export(self, principal: Principal, request: ExportRequest) -> PatientExport:
        """Find and decrypt the metadata of every record of the patient; streams open lazily."""
        context = self._context
        ids = await self.record_ids(principal.tenant, request.patient_id)
        stored = context.index.read(lambda t: [(t.get_record(rid), t.get_dek(rid)) for rid in ids])
        present = [(s, w) for s, w in stored if s is not None and w is not None and s.tenant == principal.tenant]
        records = await self._reader.records_for(principal, present)
        deks = await context.data_keys.unwrap([s.id for s, _ in present])
        streams = []
        for s, _ in present:
            dek = deks.get(s.id)
            if dek is None:
                raise KeyMaterialError()
            streams.append(self._reader.blob_stream(principal, s, dek))
        return PatientExport(
            tuple(records), tuple(member_names(records)), format_timestamp(context.clock()), tuple(streams),
        )


def _authentic_or_none(txn: IndexTxn, rid: bytes) -> StoredRecord | None:
    """The record, or None if it is gone or failed its index MAC (counted by the seal)."""
    try:
        return txn.get_record(rid)
    except IndexTampered:
        return None
