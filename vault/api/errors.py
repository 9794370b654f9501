"""The error JSON of docs/api.md, built in one place from the exception tree of vault.errors."""

from __future__ import annotations

import json

from aiohttp import web

from vault.errors import (
    ImageVaultError, InvalidRequest, MethodNotAllowed, NotFound, RangeNotSatisfiable, RenditionPending, TooLarge,
    Unauthorized, Unavailable, UnsupportedMediaType,
)


def error_body(code: str, message: str, request_id: str) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def error_response(exc: ImageVaultError, request_id: str) -> web.Response:
    headers: dict[str, str] = {}
    if isinstance(exc, (Unavailable, RenditionPending)):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="imagevault"'
    if isinstance(exc, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.size}"
    if isinstance(exc, MethodNotAllowed):
        headers["Allow"] = exc.allow
    body = error_body(exc.code, exc.message, request_id)
    field = getattr(exc, "field", None)
    if field is not None:
        body["error"]["field"] = field  # type: ignore[index]
    return web.Response(
        status=exc.status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def http_exception_as_error(exc: web.HTTPException) -> ImageVaultError:
    """The error of the hierarchy for an ``HTTPException`` aiohttp raised (router, body limits)."""
    if exc.status == 404:
        return NotFound()
    if exc.status == 405:
        return MethodNotAllowed(allow=exc.headers.get("Allow", ""))
    if exc.status == 413:
        return TooLarge()
    if exc.status == 415:
        return UnsupportedMediaType()
    if exc.status == 400:
        return InvalidRequest(exc.reason)
    error = ImageVaultError(exc.reason or "error")
    error.status = exc.status
    error.code = (exc.reason or "error").lower().replace(" ", "_")
    return error
