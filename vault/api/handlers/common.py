"""Small helpers shared by the handlers: JSON bodies and responses."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import StreamReader, web

from vault.api.keys import PRINCIPAL, VAULT
from vault.auth import Principal
from vault.errors import InvalidRequest, RequestTimeout, TooLarge, UnsupportedMediaType
from vault.service import Vault
from vault.values import parse_bool

MAX_JSON_BYTES = 256 * 1024


def vault_of(request: web.Request) -> Vault:
    return request.app[VAULT]


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]


async def read_bounded(stream: StreamReader, limit: int, what: str, timeout: float) -> bytes:
    """Read a body to the end, refusing more than ``limit`` bytes and stalls over ``timeout``."""
    buffer = bytearray()
    while True:
        try:
            piece = await asyncio.wait_for(stream.readany(), timeout)
        except asyncio.TimeoutError as exc:
            raise RequestTimeout() from exc
        if not piece:
            return bytes(buffer)
        buffer += piece
        if len(buffer) > limit:
            raise TooLarge(f"{what} exceeds {limit} bytes")


async def read_json(request: web.Request, *, limit: int = MAX_JSON_BYTES, allow_empty: bool = False) -> Any:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"JSON body exceeds {limit} bytes")
    if request.body_exists and request.content_type not in ("application/json", "application/merge-patch+json"):
        raise UnsupportedMediaType("request body must be application/json")
    raw = await read_bounded(request.content, limit, "JSON body", vault_of(request).config.body_read_timeout)
    if not raw.strip():
        if allow_empty:
            return {}
        raise InvalidRequest("request body must be a JSON object")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequest("request body is not valid JSON") from exc


def parse_flag(value: str | None, name: str) -> bool:
    """A boolean query parameter: absent = false; else one of ``vault.values``' words, or 400."""
    if value is None:
        return False
    try:
        return parse_bool(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be true or false") from None


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(data, separators=(",", ":")),
        content_type="application/json",
        headers=headers,
    )
