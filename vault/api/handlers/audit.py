"""``/v1/audit`` and ``/v1/audit/verify`` (roles auditor and admin).

The listing's filters arrive as query parameters and are validated here; which scopes a caller
may see is the facade's decision (``Vault.audit_entries``).
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from vault.api.handlers.common import json_response, principal_of, vault_of
from vault.audit.store import MAX_PAGE, AuditFilter
from vault.errors import ImageVaultError, invalid_field
from vault.ids import decode_id
from vault.metadata import is_text, parse_timestamp

DEFAULT_LIMIT = 100
MAX_ACTOR = 256


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        raise invalid_field(name, f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _time_param(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return parse_timestamp(raw, name)
    except ImageVaultError:
        raise invalid_field(name, f"{name} must be an RFC 3339 timestamp with a time zone") from None


def audit_filter(request: web.Request) -> AuditFilter:
    """``record_id``, ``actor``, ``since`` and ``until`` from the query (400 if malformed)."""
    record_id = None
    raw_id = request.query.get("record_id")
    if raw_id is not None:
        try:
            record_id = decode_id(raw_id)
        except ImageVaultError:
            raise invalid_field("record_id", "record_id must be a record id") from None
    actor = request.query.get("actor")
    if actor is not None and not is_text(actor, MAX_ACTOR):
        raise invalid_field("actor", f"actor must be a name of 1 to {MAX_ACTOR} characters")
    since, until = _time_param(request, "since"), _time_param(request, "until")
    if since is not None and until is not None and until <= since:
        raise invalid_field("until", "until must be later than since")
    return AuditFilter(record_id=record_id, actor=actor, since=since, until=until)


async def list_entries(request: web.Request) -> web.Response:
    principal = principal_of(request)
    after = _int_param(request, "after", 0, 0, 2**63 - 1)
    limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_PAGE)
    wanted = audit_filter(request)
    page = await vault_of(request).audit_entries(principal, after=after, limit=limit, wanted=wanted)
    return json_response({"entries": [e.to_json() for e in page.entries], "next_after": page.next_after})


async def verify(request: web.Request) -> web.Response:
    result = await vault_of(request).verify_audit(principal_of(request))
    return json_response(result.to_json())
