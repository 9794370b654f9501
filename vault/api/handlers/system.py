"""Unauthenticated endpoints (health, readiness, metrics, OpenAPI, info) and admin stats."""

from __future__ import annotations

import time

from aiohttp import web

from vault.api.errors import error_body
from vault.api.handlers.common import json_response, principal_of, vault_of
from vault.api.keys import REQUEST_ID
from vault.api.openapi import build_openapi


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    readiness = await vault_of(request).readiness()
    age = round(max(0.0, time.monotonic() - readiness.checked_at), 1)
    if readiness.ok:
        return json_response({"status": "ready", "checks": readiness.checks, "age_seconds": age, **readiness.notes})
    failing = ", ".join(f"{part}: {state}" for part, state in readiness.checks.items() if state != "ok")
    body = error_body("not_ready", f"not ready ({failing})", request[REQUEST_ID])
    body["checks"] = readiness.checks
    body["age_seconds"] = age
    return json_response(body, status=503, headers={"Retry-After": "5"})


async def metrics(request: web.Request) -> web.Response:
    vault = vault_of(request)
    return web.Response(body=vault.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def openapi(request: web.Request) -> web.Response:
    return json_response(build_openapi(vault_of(request).config))


async def info(request: web.Request) -> web.Response:
    return json_response(vault_of(request).info())


async def admin_stats(request: web.Request) -> web.Response:
    return json_response(await vault_of(request).stats(principal_of(request)))
