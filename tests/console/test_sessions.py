"""Console sessions through the real application (aiohttp test client): sign-in, the cookie, the
same permissions as the token, idle and absolute expiry, CSRF and origin checks, headers."""

from __future__ import annotations

from typing import Any

from tests.conftest import sample_metadata
from vault.api.app import create_app
from vault.api.keys import SESSIONS
from vault.api.sessions import COOKIE_NAME, CSRF_HEADER
from vault.cli.common import COMMAND_LINE


async def sign_in(client: Any, token: str, **headers: str) -> Any:
    response = await client.post("/v1/session", json={"token": token}, headers=headers)
    return response


def cookie_of(client: Any) -> str:
    return client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE_NAME].value


async def test_sign_in_sets_an_httponly_strict_cookie_and_returns_the_csrf_token(api):
    response = await sign_in(api.client, await api.token("clinician"))
    body = await response.json()
    assert response.status == 201, body
    assert body["signed_in"] is True and body["role"] == "clinician" and body["tenant"] == "clinic-a"
    assert len(body["csrf_token"]) >= 32 and body["idle_timeout"] == api.service.config.console_idle_timeout - 60  # less the touch interval
    set_cookie = response.headers["Set-Cookie"]
    assert f"{COOKIE_NAME}=" in set_cookie and "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert "Path=/" in set_cookie and "Secure" not in set_cookie  # plain HTTP here
    assert response.headers["Cache-Control"] == "no-store"
    token = await api.token("clinician")
    assert token not in set_cookie and token not in await response.text()


async def test_the_cookie_authenticates_the_api_with_the_tokens_role_and_tenant(api):
    record = await api.upload(b"\xff\xd8\xff\xe0" + b"x" * 64)
    await api.upload(b"\xff\xd8\xff\xe0" + b"y" * 64, tenant="clinic-b")
    assert (await sign_in(api.client, await api.token("clinician"))).status == 201
    found = await api.client.post("/v1/search", json={}, headers={CSRF_HEADER: "wrong"})
    assert found.status == 403  # state-changing method, wrong token: refused before the search
    session = await (await api.client.get("/v1/session")).json()
    found = await api.client.post("/v1/search", json={}, headers={CSRF_HEADER: session["csrf_token"]})
    items = (await found.json())["items"]
    assert [item["id"] for item in items] == [record["id"]]  # its own tenant only
    assert (await api.client.get(f"/v1/images/{record['id']}/metadata")).status == 200
    # No permission the role lacks: a clinician's session may not erase or read the trail.
    erase = await api.client.post("/v1/patients/erase", json={"patient_id": "x", "reason": "r"},
                                  headers={CSRF_HEADER: session["csrf_token"]})
    assert erase.status == 403 and (await erase.json())["error"]["code"] == "forbidden"
    assert (await api.client.get("/v1/audit")).status == 403


async def test_a_revoked_token_ends_its_session_on_the_next_request(api):
    token = await api.token("auditor")
    assert (await sign_in(api.client, token)).status == 201
    assert (await api.client.get("/v1/audit")).status == 200
    name = api.service.tokens.list("clinic-a")[0].name
    await api.service.revoke_token(COMMAND_LINE, name)
    assert (await api.client.get("/v1/audit")).status == 401


async def test_a_bad_token_gets_401_and_no_cookie(api):
    response = await sign_in(api.client, "ivt_" + "a" * 43)
    assert response.status == 401 and "Set-Cookie" not in response.headers
    response = await api.client.post("/v1/session", json={"token": 5})
    body = await response.json()
    assert response.status == 400 and body["error"]["field"] == "token"
    response = await api.client.post("/v1/session", json={"token": "x", "patient_id": "943 476 5919"})
    body = await response.json()
    assert response.status == 400 and body["error"]["code"] == "unknown_field" and "943" not in str(body)


async def test_reading_the_session_without_one_is_an_answer_not_401(api):
    response = await api.client.get("/v1/session")
    assert response.status == 200 and await response.json() == {"signed_in": False, "oidc": False}
    api.client.session.cookie_jar.update_cookies({COOKIE_NAME: "forged"})
    response = await api.client.get("/v1/session")
    assert response.status == 200 and (await response.json())["signed_in"] is False
    # Any other route with an unknown session: 401 as for a bad token.
    assert (await api.client.get("/v1/audit")).status == 401


async def test_sign_out_ends_the_session_and_needs_the_csrf_token(api):
    info = await (await sign_in(api.client, await api.token("dpo"))).json()
    refused = await api.client.delete("/v1/session")
    assert refused.status == 403 and (await refused.json())["error"]["code"] == "csrf_rejected"
    done = await api.client.delete("/v1/session", headers={CSRF_HEADER: info["csrf_token"]})
    assert done.status == 204
    assert (await (await api.client.get("/v1/session")).json())["signed_in"] is False
    assert (await api.client.post("/v1/search", json={}, headers={CSRF_HEADER: info["csrf_token"]})).status == 401


async def test_sign_in_and_sign_out_are_in_the_audit_trail_with_who_and_how(api):
    info = await (await sign_in(api.client, await api.token("dpo"))).json()
    await api.client.delete("/v1/session", headers={CSRF_HEADER: info["csrf_token"]})
    refused = await sign_in(api.client, "ivt_" + "x" * 40)  # no session: nothing to audit as a sign-in
    assert refused.status == 401
    entries = [e.event for e in api.service.audit.page(0, 1000).entries if e.event.action.startswith("session_")]
    assert [(e.action, e.outcome, e.actor.name, e.scope) for e in entries] == [
        ("session_start", "ok", info["name"], info["tenant"]),
        ("session_end", "ok", info["name"], info["tenant"]),
    ]
    assert entries[0].details == {"console_sign_in": "token"}


async def test_cross_site_requests_are_refused_with_the_csrf_error(api):
    info = await (await sign_in(api.client, await api.token("dpo"))).json()
    csrf = info["csrf_token"]
    body = {"patient_id": "943 476 5919", "reason": "forged"}
    cases = [
        {},  # no CSRF header
        {CSRF_HEADER: csrf, "Origin": "http://evil.example"},
        {CSRF_HEADER: csrf, "Sec-Fetch-Site": "cross-site"},
        {CSRF_HEADER: csrf, "Sec-Fetch-Site": "same-site"},
        {CSRF_HEADER: csrf, "Origin": "null"},
        {CSRF_HEADER: csrf[:-1] + ("A" if csrf[-1] != "A" else "B")},
    ]
    for headers in cases:
        response = await api.client.post("/v1/patients/legal-hold", json={**body, "hold": True}, headers=headers)
        error = (await response.json())["error"]
        assert response.status == 403 and error["code"] == "csrf_rejected", headers
        assert "943" not in error["message"]
    # A cross-site GET is refused too (the cookie would not be sent by a browser anyway).
    response = await api.client.get("/v1/session/../audit".replace("/session/..", ""), headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status == 403
    # Signing a browser in from another site is refused before the token is looked at.
    response = await sign_in(api.client, await api.token("dpo"), Origin="http://evil.example")
    assert response.status == 403 and (await response.json())["error"]["code"] == "csrf_rejected"
    # The console's own request passes.
    own = {CSRF_HEADER: csrf, "Origin": str(api.client.make_url("")).rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    response = await api.client.post("/v1/patients/legal-hold", json={**body, "hold": True}, headers=own)
    assert response.status == 200, await response.text()


async def test_bearer_clients_are_unaffected_by_csrf_rules(api):
    headers = {**await api.headers("dpo"), "Origin": "http://elsewhere.example"}
    response = await api.client.post("/v1/patients/legal-hold",
                                     json={"patient_id": "p", "hold": True, "reason": "r"}, headers=headers)
    assert response.status == 200
    # A bearer header wins over a cookie: the request is the token's, not the session's.
    await sign_in(api.client, await api.token("clinician"))
    response = await api.client.post("/v1/patients/legal-hold",
                                     json={"patient_id": "p", "hold": True, "reason": "r"}, headers=headers)
    assert response.status == 200


async def test_idle_session_is_refused_by_the_api(api):
    store = api.client.app[SESSIONS]
    now = [0.0]
    store.clock = lambda: now[0]
    await sign_in(api.client, await api.token("auditor"))
    assert (await api.client.get("/v1/audit")).status == 200
    now[0] += store.idle_timeout + 1
    assert (await api.client.get("/v1/audit")).status == 401


async def test_security_headers_on_pages_and_api(api):
    page = await api.client.get("/console/")
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]
    csp = page.headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'",
                      "base-uri 'none'", "form-action 'self'"):
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["X-Frame-Options"] == "DENY"
    script = await api.client.get("/console/app.js")
    assert script.status == 200 and "javascript" in script.headers["Content-Type"]
    assert script.headers["Content-Security-Policy"] == csp
    root = await api.client.get("/", allow_redirects=False)
    assert root.status == 302 and root.headers["Location"] == "/console/"
    missing = await api.client.get("/console/nothing.js")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
    escape = await api.client.get("/console/../vault/config.py")
    assert escape.status == 404
    record = await api.upload(b"\xff\xd8\xff\xe0" + b"z" * 64, sample_metadata())
    metadata = await api.client.get(f"/v1/images/{record['id']}/metadata", headers=await api.headers())
    assert "no-store" in metadata.headers["Cache-Control"] and metadata.headers["Referrer-Policy"] == "no-referrer"
    search = await api.client.post("/v1/search", json={}, headers=await api.headers())
    assert search.headers["Cache-Control"] == "no-store" and search.headers["X-Content-Type-Options"] == "nosniff"
    image = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
    assert image.headers["Cache-Control"] == "private, no-store"  # the handler's own value is kept


async def test_html_has_no_inline_script_or_style():
    from vault.console import STATIC_DIR

    html = (STATIC_DIR / "index.html").read_text()
    assert "<script>" not in html and " style=" not in html and "onclick" not in html
    for path in STATIC_DIR.glob("*.js"):
        text = path.read_text()
        assert "innerHTML" not in text and "eval(" not in text and "console.log" not in text, path.name
        assert "localStorage" not in text and "sessionStorage" not in text and "history." not in text, path.name


def test_app_factory_builds_a_store_from_config(config):
    app = create_app(config.with_overrides(console_idle_timeout=30, console_session_lifetime=60))
    assert app[SESSIONS].idle_timeout == 30 and app[SESSIONS].lifetime == 60
