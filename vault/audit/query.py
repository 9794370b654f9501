"""Which audit entries a listing wants: the filter, and its parsing from text (query
parameters, command-line options) with the API's validation errors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from vault.audit.chain import AuditEntry
from vault.errors import ImageVaultError, invalid_field
from vault.ids import decode_id
from vault.metadata import is_text, parse_timestamp

MAX_ACTOR = 256


@dataclass(frozen=True)
class AuditFilter:
    """Every condition given must hold."""

    scopes: frozenset[str] | None = None  # None: every scope (an admin's view)
    record_id: bytes | None = None  # entries naming this record
    actor: str | None = None  # the actor's name
    since: datetime | None = None  # time >= since
    until: datetime | None = None  # time < until

    def matches(self, entry: AuditEntry) -> bool:
        event = entry.event
        if self.scopes is not None and event.scope not in self.scopes:
            return False
        if self.record_id is not None and self.record_id not in event.record_ids:
            return False
        if self.actor is not None and event.actor.name != self.actor:
            return False
        if self.since is not None and entry.time < self.since:
            return False
        return self.until is None or entry.time < self.until


def _time(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_timestamp(text, name)
    except ImageVaultError:
        pass
    # Valid, but outside datetime's range once moved to UTC (year 1 or 9999 with an offset):
    # before, or after, every entry.
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in text.upper():
        raise invalid_field(name, f"{name} must be an RFC 3339 timestamp with a time zone")
    return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=timezone.utc)


def parse_audit_filter(
    record_id: str | None = None, actor: str | None = None, since: str | None = None, until: str | None = None,
) -> AuditFilter:
    """The filter from its text form; 400 ``invalid_request`` naming the bad field."""
    raw_id = None
    if record_id is not None:
        try:
            raw_id = decode_id(record_id)
        except ImageVaultError:
            raise invalid_field("record_id", "record_id must be a record id") from None
    if actor is not None and not is_text(actor, MAX_ACTOR):
        raise invalid_field("actor", f"actor must be a name of 1 to {MAX_ACTOR} characters")
    # since >= until is no error, only an empty range: no schema could state that rule.
    return AuditFilter(record_id=raw_id, actor=actor, since=_time(since, "since"), until=_time(until, "until"))
