"""The retention sweeper: shred every record whose retention has ended and that is not held.

It walks ``by_expiry`` (``TIME(retain_until) || ID``, so the due records are one prefix of the
database) from the beginning up to the service clock's *now*, a page at a time, and hands each
page to the shredder with ``expired_only``: the decision is re-made inside the write
transaction, so a hold placed meanwhile wins. Held records stay in ``by_expiry`` and are
counted as ``held`` by every sweep until the hold is released.

It runs inside the daemon every ``sweep_interval`` seconds (0 disables it; first run at
start-up, under the supervisor), as ``imagevault retention sweep [--dry-run]`` and as
``POST /v1/admin/retention/sweep`` (an operator's sweep covers its own tenant only). Every page that shreds something appends one ``expire``
entry per tenant to the audit trail, listing the record ids; the run itself is audited as one
``retention_sweep`` entry with the counts.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from vault.audit.chain import AuditAction
from vault.audit.hooks import append_event, note
from vault.auth import ADMIN_TENANT, Principal, Role
from vault.errors import IndexTampered
from vault.ids import encode_id
from vault.index import schema
from vault.index.engine import IndexTxn
from vault.services.context import ServiceContext
from vault.services.shredding import LEGAL_HOLD, SHREDDED, TAMPERED, Shredder, ShredRule

log = logging.getLogger(__name__)
PAGE = 1000
# The daemon's own sweeps act as this principal (no token: it is the daemon itself).
SCHEDULED_SWEEPER = Principal(ADMIN_TENANT, Role.ADMIN, "retention-sweeper")


@dataclass(frozen=True)
class SweepReport:
    due: int  # records whose retention had ended
    shredded: int
    held: int  # due but on legal hold, kept
    dry_run: bool
    tampered: int = 0  # due by the index but failing its integrity check: never shredded

    # The run's own audit entry is a summary; the ids are in the per-tenant "expire" entries.
    audit_ids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, int]:
        body = {"due": self.due, "shredded": self.shredded, "held": self.held}
        if self.tampered:
            body["tampered"] = self.tampered
        return body


class RetentionSweeper:
    def __init__(self, context: ServiceContext, shredder: Shredder) -> None:
        self._context = context
        self._shredder = shredder

    async def sweep(
        self, principal: Principal, *, dry_run: bool, progress: Callable[[int, int], None] | None = None,
    ) -> SweepReport:
        """Sweep every tenant for an admin (and the daemon's own sweeper), only the caller's
        tenant for anyone else: an operator's sweep neither touches nor counts other tenants'
        records."""
        context = self._context
        tenant = None if principal.sees_all_tenants else principal.tenant
        now = context.clock()
        stop = schema.encode_time(now) + b"\xff" * schema.ID_LEN  # retain_until <= now
        total = context.index.read(lambda t: sum(1 for _ in t.scan_keys(schema.DB_BY_EXPIRY, b"", stop)))
        start = b""
        due = shredded = held = seen = tampered = 0
        while True:
            def page(txn: IndexTxn, start: bytes = start) -> tuple[bytes | None, int, list[tuple[bytes, bool | str | None]]]:
                # The last key looked at, how many, and (key, legal hold) per due entry of the tenant(s)
                # swept; the hold is read here only for a dry run: a real sweep decides inside
                # the shredder's write transaction.
                out: list[tuple[bytes, bool | str | None]] = []
                last, scanned = None, 0
                for key in txn.scan_keys(schema.DB_BY_EXPIRY, start, stop):
                    last, scanned = key, scanned + 1
                    try:
                        record = txn.get_record(schema.record_id_of(key)) if dry_run or tenant is not None else None
                    except IndexTampered:
                        if tenant is None:  # its tenant is not to be trusted: an all-tenant sweep reports it
                            out.append((key, TAMPERED))
                    else:
                        if tenant is None or (record is not None and record.tenant == tenant):
                            out.append((key, None if record is None else record.metadata.legal_hold))
                    if scanned == PAGE:
                        break
                return last, scanned, out

            last, scanned, keys = context.index.read(page)
            if last is None:
                break
            seen += scanned
            if dry_run:
                tampered += sum(1 for _, hold in keys if hold == TAMPERED)
                due += sum(1 for _, hold in keys if isinstance(hold, bool))
                held += sum(1 for _, hold in keys if hold is True)
            elif keys:
                rule = ShredRule(now, tenant, expired_only=True)
                decisions = await self._shredder.shred([schema.record_id_of(k) for k, _ in keys], rule)
                by_tenant: dict[str, list[str]] = defaultdict(list)
                for d in decisions:
                    if d.code is SHREDDED:
                        shredded += 1
                        by_tenant[d.tenant or ""].append(encode_id(d.id))
                    elif d.code == LEGAL_HOLD:
                        held += 1
                    elif d.code == TAMPERED:
                        tampered += 1
                        log.error("record %s due by the index failed its integrity check: kept", encode_id(d.id))
                due += sum(1 for d in decisions if d.code is SHREDDED or d.code == LEGAL_HOLD)
                for owner, ids in by_tenant.items():
                    await append_event(context.audit, principal, AuditAction.EXPIRE, ids, scope=owner)
            start = last + b"\x00"
            if progress is not None:
                progress(seen, max(total, seen))
        note(due=due, shredded=shredded, held=held, dry_run=dry_run)
        if tampered:
            note(tampered=tampered)
        return SweepReport(due, shredded, held, dry_run, tampered)
