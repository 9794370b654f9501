"""``POST /v1/search``: patient timeline and facet search with cursor paging."""

from __future__ import annotations


from aiohttp import web

from vault.api.handlers.common import json_response, principal_of, read_json, vault_of
from vault.audit.chain import AuditAction
from vault.auth import Action
from vault.search import parse_search


async def search(request: web.Request) -> web.Response:
    principal = principal_of(request)
    await vault_of(request).refuse_unless(principal, Action.SEARCH, AuditAction.SEARCH)
    query = parse_search(await read_json(request))
    page = await vault_of(request).search(principal, query)
    return json_response(page.to_json(include_personal=principal.sees_personal_data))
