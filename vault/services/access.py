"""A patient's access report, for the DPO: who touched this patient's records, when, and how it went.

The patient's records are found the way every patient operation finds them, through the
tenant's blind index (``PatientService.record_ids``, every read key, so a lookup during a shred
epoch still finds them). The entries that name them come from the audit trail's record index
(``AuditLog.seqs_naming``), not from a walk of the whole trail; only entries in the DPO's own
tenant scope are reported, so another tenant's probing of an id (audited in *its* scope) and
an admin's global entries never appear. Each access lists only the record ids of this patient
that its entry names (a search that returned fifty records shows this patient's one).

What it cannot cover, by design: a record already shredded or erased is no longer linked to
the patient (its blind-index entries and key are gone), so accesses to it are not reported
even though its id is still in the trail. Under the ``legacy`` patient-id scheme the blind
index may have merged differently written ids into one; the report says so (``merged_ids``),
as an erasure does.

The report is bounded by the trail's head when it starts (its own ``access_report`` entry is
not in it) and streamed: entries are read in batches off the event loop and written as they
are serialised, so a patient with a long history never builds one large body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from vault.audit.chain import AuditEntry
from vault.audit.hooks import note
from vault.auth import Principal
from vault.ids import encode_id
from vault.metadata import format_timestamp
from vault.patients import AccessReportRequest
from vault.services.context import ServiceContext
from vault.services.patients import PatientService

BATCH = 500  # entries per read transaction and per write to the client


def access_json(entry: AuditEntry, wanted: frozenset[bytes]) -> dict[str, Any]:
    """One access: who (the human behind an application too, when the entry names one), when,
    what, how it ended, and which of the patient's records."""
    actor = entry.event.actor.to_json()
    who: dict[str, Any] = {"name": actor["name"], "role": actor["role"]}
    if actor.get("on_behalf_of"):
        who["on_behalf_of"] = actor["on_behalf_of"]
    return {
        "seq": entry.seq,
        "time": format_timestamp(entry.time),
        "actor": who,
        "action": entry.event.action,
        "outcome": entry.event.outcome,
        "record_ids": [encode_id(r) for r in entry.event.record_ids if r in wanted],
    }


@dataclass(frozen=True)
class AccessReport:
    records: tuple[bytes, ...]  # the patient's live records in the tenant
    merged_ids: bool | None
    through: int  # the trail's head when the report began: entries up to it are covered
    generated_at: str
    seqs: tuple[int, ...] = field(repr=False)  # candidate entries (from the record index)
    read_entries: Callable[[list[int]], list[AuditEntry]] = field(repr=False)
    tenant: str = ""

    @property
    def audit_ids(self) -> tuple[str, ...]:
        """What the report's own audit entry names: the records it covers, never the patient."""
        return tuple(encode_id(r) for r in self.records)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The report as one JSON object, in pieces: the header, then the accesses a batch at
        a time, then the closing brackets (a cut-off transfer is never valid JSON)."""
        head: dict[str, Any] = {
            "generated_at": self.generated_at, "through_seq": self.through,
            "records": list(self.audit_ids),
        }
        if self.merged_ids is not None:
            head["merged_ids"] = self.merged_ids
        yield json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"accesses":['
        wanted = frozenset(self.records)
        loop = asyncio.get_running_loop()
        first = True
        for start in range(0, len(self.seqs), BATCH):
            batch = list(self.seqs[start:start + BATCH])
            entries = await loop.run_in_executor(None, self.read_entries, batch)
            pieces = []
            for entry in entries:
                if entry.event.scope != self.tenant:
                    continue
                pieces.append(json.dumps(access_json(entry, wanted), separators=(",", ":")))
            if pieces:
                yield (b"" if first else b",") + ",".join(pieces).encode()
                first = False
        yield b"]}"


class AccessReports:
    def __init__(self, context: ServiceContext, patients: PatientService) -> None:
        self._context = context
        self._patients = patients

    async def report(self, principal: Principal, request: AccessReportRequest) -> AccessReport:
        context = self._context
        audit = context.audit
        through = audit.head()[0]
        ids = await self._patients.record_ids(principal.tenant, request.patient_id)
        merged = await self._patients.merged_ids(principal.tenant, ids, request.patient_id)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, audit.record_index_complete):
            await audit.index_records()
        seqs = await loop.run_in_executor(None, audit.seqs_naming, ids, through)
        note(through_seq=through, candidate_entries=len(seqs))
        if merged is not None:
            note(merged_ids=merged)
        return AccessReport(
            tuple(ids), merged, through, format_timestamp(context.clock()), tuple(seqs), audit.entries,
            principal.tenant,
        )
