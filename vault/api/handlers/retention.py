"""``POST /v1/admin/retention/sweep?dry_run=true|false`` (operator: its tenant; admin: every tenant)."""

from __future__ import annotations

from aiohttp import web

from vault.api.handlers.common import json_response, parse_flag, principal_of, vault_of


async def sweep(request: web.Request) -> web.Response:
    dry_run = parse_flag(request.query.get("dry_run"), "dry_run")
    report = await vault_of(request).sweep_retention(principal_of(request), dry_run=dry_run)
    return json_response(report.to_json())
