"""Console sessions: sign in with a token (``POST /v1/session``), read, sign out.

The store and the cookie and CSRF rules are in vault/api/sessions.py.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from aiohttp import web

from vault.api.handlers.common import json_response, principal_of, read_json, vault_of
from vault.api.keys import CONSOLE_OIDC, PRINCIPAL, SESSION, SESSIONS
from vault.api.sessions import (
    COOKIE_NAME,
    Session,
    SessionStore,
    clear_session_cookie,
    request_origin_ok,
    set_session_cookie,
)
from vault.auth import MAX_JWT_LENGTH
from vault.errors import (
    CrossSiteRequest,
    InvalidRequest,
    NotFound,
    Unauthorized,
    UnknownField,
    invalid_field,
)


def _describe(store: SessionStore, session: Session) -> dict[str, object]:
    # idle_timeout: how long the session is sure to live after this request, the page's
    # countdown. The stored last use moves in steps of the touch interval, so the server may end
    # the session up to that much before the configured timeout, never after it.
    principal = session.principal
    expires = datetime.fromtimestamp(store.expires_at(session), UTC).isoformat().replace("+00:00", "Z")
    return {
        "signed_in": True, "csrf_token": session.csrf_token, "tenant": principal.tenant, "role": principal.role.value,
        "name": principal.name, "via": principal.via, "idle_timeout": store.idle_timeout - store.touch_interval,
        "expires_at": expires,
    }


async def start_session(request: web.Request) -> web.Response:
    if not request_origin_ok(request):  # nobody may sign a browser in from another site
        raise CrossSiteRequest()
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    for key in body:
        if key != "token":
            raise UnknownField(key if key.isidentifier() and key.islower() else "<withheld>")
    token = body.get("token")
    if not isinstance(token, str) or not token.strip() or len(token) > MAX_JWT_LENGTH:
        raise invalid_field("token", "token must be a non-empty string of at most 8192 characters")
    token = token.strip()
    principal = await vault_of(request).authenticate(token)
    store = request.app[SESSIONS]
    session_id, session = await store.start(token, principal)
    await vault_of(request).console_session_started(principal, via="token")
    response = json_response(_describe(store, session), status=201)
    set_session_cookie(request, response, session_id, store.lifetime)
    return response


def _session_of(request: web.Request) -> Session:
    session = request.get(SESSION)
    if session is None:  # a bearer-token caller has no console session to show or end
        raise NotFound("no console session: this request was not authenticated by one")
    principal_of(request)  # authenticated: the stored credential still holds
    return session


async def read_session(request: web.Request) -> web.Response:
    """The session of this browser, or ``{"signed_in": false}`` (no cookie, an ended session, a
    bearer-token caller): the console asks this before it has signed in."""
    session = request.get(SESSION)
    if session is None or request.get(PRINCIPAL) is None:
        return json_response({"signed_in": False, "oidc": CONSOLE_OIDC in request.app})
    return json_response(_describe(request.app[SESSIONS], session))


async def end_session(request: web.Request) -> web.Response:
    _session_of(request)
    await request.app[SESSIONS].end(request.cookies[COOKIE_NAME])
    await vault_of(request).console_session_ended(principal_of(request))
    response = web.Response(status=204)
    clear_session_cookie(request, response)
    return response


# The state of a sign-in at the identity provider, bound to the browser that started it: the
# callback must come back with the same state in the URL and in this cookie (so that nobody can
# sign a victim's browser in with their own account). SameSite=Lax: the provider's redirect
# back is a cross-site navigation, on which a Strict cookie would not be sent.
OIDC_STATE_COOKIE = "imagevault_oidc_state"
OIDC_COOKIE_PATH = "/v1/session/oidc"
CALLBACK_PATH = "/v1/session/oidc/callback"
SIGN_IN_FAILED = "/console/?signin=failed"


async def oidc_begin(request: web.Request) -> web.Response:
    flow = request.app.get(CONSOLE_OIDC)
    if flow is None:
        raise NotFound("sign-in at the identity provider is not configured")
    state, url = await flow.begin(f"{request.scheme}://{request.host}{CALLBACK_PATH}")
    response = web.Response(status=302, headers={"Location": url})
    response.set_cookie(OIDC_STATE_COOKIE, state, path=OIDC_COOKIE_PATH, httponly=True, samesite="Lax",
                        secure=request.secure, max_age=600)
    return response


async def oidc_callback(request: web.Request) -> web.Response:
    """Back from the provider: redeem the code, start a session, go to the console. Any failure
    (a denied sign-in, a state that is not this browser's, a code the provider refuses, a token
    imagevault does not accept) leads back to the sign-in page with a generic message."""
    flow = request.app.get(CONSOLE_OIDC)
    if flow is None:
        raise NotFound("sign-in at the identity provider is not configured")
    state = request.query.get("state", "")
    expected = request.cookies.get(OIDC_STATE_COOKIE, "")
    response = web.Response(status=302, headers={"Location": SIGN_IN_FAILED})
    response.del_cookie(OIDC_STATE_COOKIE, path=OIDC_COOKIE_PATH)
    if not state or not hmac.compare_digest(state.encode(), expected.encode()) or "error" in request.query:
        return response
    try:
        token = await flow.finish(state, request.query.get("code", ""), f"{request.scheme}://{request.host}{CALLBACK_PATH}")
        principal = await vault_of(request).authenticate(token)
    except Unauthorized:
        return response
    store = request.app[SESSIONS]
    session_id, _ = await store.start(token, principal)
    await vault_of(request).console_session_started(principal, via="oidc")
    response.headers["Location"] = "/console/"
    set_session_cookie(request, response, session_id, store.lifetime)
    return response
