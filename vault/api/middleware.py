"""Middlewares: request id, metrics, bearer authentication and the one error mapping.

Order (outermost first): ``request_context`` (id + metrics + errors → JSON) then ``authenticate``.
Every response, streamed ones included, carries ``X-Request-Id`` (set in ``on_response_prepare``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from vault.api.errors import error_response, http_exception_as_error
from vault.api.keys import IN_FLIGHT, PRINCIPAL, REQUEST_ID, SESSION, SESSIONS, VAULT
from vault.api.sessions import COOKIE_NAME, check_cross_site
from vault.auth import Principal
from vault.errors import (
    HeadersTooLarge,
    ImageVaultError,
    InvalidRequest,
    RequestTimeout,
    Unauthorized,
)
from vault.logs import REQUEST_ID as LOGGED_REQUEST_ID

log = logging.getLogger("vault.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{8,64}$")
# An application token created with the right names the user it acts for (vault/auth.py).
ON_BEHALF_HEADER = "X-On-Behalf-Of"
# The longest header field (name or value) a request may carry, but under LARGE_HEADER_PATH:
# tus uploads send the record metadata base64-encoded in Upload-Metadata, so the connection's
# parser admits more (vault/api/app.py handler_args) and this middleware holds the rest here.
HEADER_FIELD_LIMIT = 16384
LARGE_HEADER_PATH = "/v1/uploads"
# Paths served without a token.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/info"})
# Signing in to the console: the credential is in the body (vault/api/handlers/session.py).
SESSION_PATH = "/v1/session"
SIGN_IN = ("POST", SESSION_PATH)
# Signing in at the identity provider: the browser is sent there and back without a credential.
OIDC_SIGN_IN = frozenset({("GET", SESSION_PATH + "/oidc"), ("GET", SESSION_PATH + "/oidc/callback")})


def _route_template(request: web.Request) -> str:
    # A closed set of label values: the route template, never the concrete path.
    route = request.match_info.route
    resource = route.resource if route is not None else None
    if resource is None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    # Every log line logged while this request is handled carries its id (JSON logs); reset
    # after, since aiohttp handles the next request of a kept-alive connection in the same task.
    logged_as = LOGGED_REQUEST_ID.set(request_id)
    metrics = request.app[VAULT].metrics
    started = time.perf_counter()
    route = _route_template(request)
    status = 500
    in_flight = request.app[IN_FLIGHT]
    in_flight.enter()
    try:
        response = await handler(request)
        status = response.status
        return response
    except ImageVaultError as exc:
        status = exc.status
        if exc.status >= 500:
            log.warning("request %s failed: %s (%s)", request_id, exc.code, exc.__class__.__name__)
        response = error_response(exc, request_id)
        if isinstance(exc, RequestTimeout):
            # A body too slow to finish: the connection goes too, so the client cannot start over
            # on it and its reads stop costing the event loop (aiohttp drains what is in flight).
            metrics.connections_evicted.labels("slow_upload").inc()
            response.force_close()
        elif isinstance(exc, HeadersTooLarge):
            response.force_close()  # as when the parser refuses the head (its body is not read)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            status = exc.status
            raise
        error = http_exception_as_error(exc)
        status = error.status
        response = error_response(error, request_id)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    except Exception:
        log.exception("request %s: unexpected error", request_id)
        return error_response(ImageVaultError(), request_id)
    finally:
        LOGGED_REQUEST_ID.reset(logged_as)
        in_flight.leave()
        metrics.requests.labels(route, request.method, str(status)).inc()
        metrics.latency.labels(route, request.method).observe(time.perf_counter() - started)


@web.middleware
async def limit_header_fields(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if not (path == LARGE_HEADER_PATH or path.startswith(LARGE_HEADER_PATH + "/")):
        for name, value in request.raw_headers:
            if len(value) > HEADER_FIELD_LIMIT or len(name) > HEADER_FIELD_LIMIT:
                raise HeadersTooLarge()
    return await handler(request)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or not request.path.startswith("/v1/"):
        return await handler(request)
    if (request.method, request.path) == SIGN_IN or (request.method, request.path) in OIDC_SIGN_IN:
        return await handler(request)
    header = request.headers.get("Authorization")
    session_id = request.cookies.get(COOKIE_NAME)
    if header is None and request.path == SESSION_PATH and request.method in ("GET", "HEAD"):
        # The console asks whether it is signed in before it is: no session is an answer, not a 401.
        try:
            request[PRINCIPAL] = await _session_principal(request, session_id)
        except Unauthorized:
            request.pop(SESSION, None)
        return await handler(request)
    if header is None and session_id:
        principal = await _session_principal(request, session_id)
    else:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized()
        principal = await request.app[VAULT].authenticate(token.strip())
    vault = request.app[VAULT]
    claimed = request.headers.getall(ON_BEHALF_HEADER, [])
    if claimed:
        if len(claimed) > 1:
            raise InvalidRequest(f"at most one {ON_BEHALF_HEADER} header")
        principal = await vault.act_on_behalf(principal, claimed[0], route=_route_template(request))
    request[PRINCIPAL] = principal
    return await handler(request)


# The console's pages: their own scripts and styles only, images from the daemon or made by the
# page (blob: for a full-resolution image fetched by ranges), never framed.
CONSOLE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'")
# Everything else is data, never a document to render.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers for every response: no sniffing, no referrer, no framing; pages and API answers
    are never cached (they carry personal data, and a shared browser must not keep them)."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path == "/" or request.path.startswith("/console"):
        headers["Content-Security-Policy"] = CONSOLE_CSP
        headers["X-Frame-Options"] = "DENY"
        headers["Cache-Control"] = "no-store"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
    else:
        headers.setdefault("Content-Security-Policy", API_CSP)
        if request.path.startswith("/v1/"):
            headers.setdefault("Cache-Control", "no-store")


async def _session_principal(request: web.Request, session_id: str | None) -> Principal:
    """The console: the credential given at sign-in, checked again now as a bearer token would
    be; a request must also prove it comes from the console (vault/api/sessions.py)."""
    if not session_id:
        raise Unauthorized()
    session = await request.app[SESSIONS].find(session_id)
    check_cross_site(request, session)
    request[SESSION] = session
    return await request.app[VAULT].authenticate(session.credential)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id
