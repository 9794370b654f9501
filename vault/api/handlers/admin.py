"""``/v1/admin/keys*`` (role admin): key status, rotation with background rewrap, retirement,
the shred epoch. The facade refuses (and audits) every other role."""

from __future__ import annotations

from aiohttp import web

from vault.api.handlers.common import json_response, principal_of, vault_of


async def key_status(request: web.Request) -> web.Response:
    report = await vault_of(request).key_report(principal_of(request))
    return json_response(report.to_json())


async def rotate_keys(request: web.Request) -> web.Response:
    vault = vault_of(request)
    state = await vault.rotate_keys(principal_of(request))
    return json_response({"current_version": state.target_version, "rewrap": state.to_json()}, status=202)


async def start_epoch(request: web.Request) -> web.Response:
    state = await vault_of(request).start_epoch(principal_of(request))
    return json_response({"shred_epoch": state.to_json()}, status=202)


async def retire_keys(request: web.Request) -> web.Response:
    report = await vault_of(request).retire_keys(principal_of(request))
    return json_response(report.to_json())
