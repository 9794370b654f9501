"""``/v1/audit`` and ``/v1/audit/verify`` (roles auditor and admin).

The listing's filters arrive as query parameters and are validated here; which scopes a caller
may see is the facade's decision (``Vault.audit_entries``).
"""

from __future__ import annotations

from aiohttp import web

from vault.api.handlers.common import json_response, principal_of, vault_of
from vault.audit.query import parse_audit_filter
from vault.audit.store import MAX_PAGE
from vault.errors import invalid_field

DEFAULT_LIMIT = 100


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        raise invalid_field(name, f"{name} must be an integer from {low} to {high}")
    return int(raw)


async def list_entries(request: web.Request) -> web.Response:
    principal = principal_of(request)
    after = _int_param(request, "after", 0, 0, 2**63 - 1)
    limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_PAGE)
    query = request.query
    wanted = parse_audit_filter(query.get("record_id"), query.get("actor"), query.get("since"), query.get("until"))
    page = await vault_of(request).audit_entries(principal, after=after, limit=limit, wanted=wanted)
    return json_response({"entries": [e.to_json() for e in page.entries], "next_after": page.next_after})


async def verify(request: web.Request) -> web.Response:
    result = await vault_of(request).verify_audit(principal_of(request))
    return json_response(result.to_json())
