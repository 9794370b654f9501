"""Console sign-in at the identity provider: authorization code with PKCE against the test
issuer (a real aiohttp server with an authorization and a token endpoint), through the app."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.conftest import MovableClock, make_config, open_vault
from tests.identity.issuer import AUDIENCE, Issuer
from vault.api.app import create_app
from vault.api.handlers.session import OIDC_COOKIE_PATH, OIDC_STATE_COOKIE
from vault.api.keys import CONFIG, CONSOLE_OIDC, VAULT
from vault.api.sessions import COOKIE_NAME
from vault.config import ConfigError, load_config
from vault.errors import Unauthorized
from vault.identity.authorize import PENDING_SECONDS


@pytest.fixture
async def issuer(aiohttp_server: Any) -> Issuer:
    issuer = Issuer()
    issuer.add_key("ES256")
    return await issuer.start(aiohttp_server)


@pytest.fixture
async def console(aiohttp_client: Any, tmp_path: Any, issuer: Issuer) -> Any:
    config = make_config(tmp_path / "data", oidc_issuer=issuer.url, oidc_audience=AUDIENCE,
                         console_oidc_client_id=issuer.client_id, oidc_fetch_timeout=2.0)
    vault = await open_vault(config, MovableClock())
    yield await aiohttp_client(create_app(config, vault=vault))
    await vault.close()


async def to_provider_and_back(client: Any) -> tuple[str, str]:
    """Start at the console, follow the provider's redirect; the callback URL it sends back."""
    begin = await client.get("/v1/session/oidc", allow_redirects=False)
    assert begin.status == 302
    location = begin.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert "code_verifier" not in location and "Set-Cookie" in begin.headers
    async with aiohttp.ClientSession() as browser_elsewhere, browser_elsewhere.get(location, allow_redirects=False) as back:
        assert back.status == 302
        callback = back.headers["Location"]
    return callback, query["state"][0]


async def test_sign_in_at_the_provider_makes_a_session_with_the_tokens_role(console, issuer):
    assert (await (await console.get("/v1/session")).json()) == {"signed_in": False, "oidc": True}
    callback, _ = await to_provider_and_back(console)
    path = urlsplit(callback)
    done = await console.get(f"{path.path}?{path.query}", allow_redirects=False)
    assert done.status == 302 and done.headers["Location"] == "/console/"
    assert f"{COOKIE_NAME}=" in done.headers.getall("Set-Cookie")[-1] or any(
        COOKIE_NAME in value for value in done.headers.getall("Set-Cookie"))
    session = await (await console.get("/v1/session")).json()
    assert session["signed_in"] and session["role"] == "clinician" and session["via"] == "oidc"
    assert session["name"] == "dr.jones" and session["tenant"] == "clinic-a"
    # The code was redeemed: the same callback again fails (and signs nobody in).
    again = await console.get(f"{path.path}?{path.query}", allow_redirects=False)
    assert again.headers["Location"] == "/console/?signin=failed"


async def test_a_callback_with_another_browsers_state_is_refused(console, issuer, aiohttp_client):
    callback, _ = await to_provider_and_back(console)
    path = urlsplit(callback)
    console.session.cookie_jar.clear()  # a victim's browser: no state cookie from this sign-in
    done = await console.get(f"{path.path}?{path.query}", allow_redirects=False)
    assert done.headers["Location"] == "/console/?signin=failed"
    assert (await (await console.get("/v1/session")).json())["signed_in"] is False


async def test_a_provider_token_without_a_usable_role_signs_nobody_in(console, issuer):
    issuer.login_claims = {"roles": ["admin"]}  # a provider never grants a cross-tenant role
    callback, _ = await to_provider_and_back(console)
    path = urlsplit(callback)
    done = await console.get(f"{path.path}?{path.query}", allow_redirects=False)
    assert done.status == 302, await done.text()
    assert done.headers["Location"] == "/console/?signin=failed"
    denied = await console.get("/v1/session/oidc/callback?error=access_denied&state=x", allow_redirects=False)
    assert denied.headers["Location"] == "/console/?signin=failed"


async def test_without_a_client_id_there_is_no_provider_sign_in(api):
    assert (await api.client.get("/v1/session/oidc")).status == 404
    assert (await (await api.client.get("/v1/session")).json()) == {"signed_in": False, "oidc": False}


def test_a_client_id_needs_an_issuer(tmp_path):
    with pytest.raises(ConfigError, match="oidc_issuer"):
        load_config(tmp_path, environ={"IMAGEVAULT_CONSOLE_OIDC_CLIENT_ID": "console"})


async def test_the_browser_may_come_back_to_another_worker(console, issuer, aiohttp_client):
    """Nothing about a sign-in in progress is kept in one process: begun on one app, finished on
    another over the same index (two workers), and the provider checks the PKCE verifier."""
    other = await aiohttp_client(create_app(console.app[CONFIG], vault=console.app[VAULT]))
    callback, _ = await to_provider_and_back(console)
    path = urlsplit(callback)
    state_cookie = console.session.cookie_jar.filter_cookies(console.make_url(OIDC_COOKIE_PATH))[OIDC_STATE_COOKIE]
    done = await other.get(f"{path.path}?{path.query}", allow_redirects=False,
                           headers={"Cookie": f"{OIDC_STATE_COOKIE}={state_cookie.value}",
                                    "Host": console.make_url("/").raw_authority})  # one listening socket
    assert done.status == 302 and done.headers["Location"] == "/console/"
    session_cookie = other.session.cookie_jar.filter_cookies(other.make_url("/"))[COOKIE_NAME].value
    session = await (await console.get("/v1/session", headers={"Cookie": f"{COOKIE_NAME}={session_cookie}"})).json()
    assert session["signed_in"] and session["via"] == "oidc"


async def test_a_stale_or_unknown_state_is_refused(console, issuer):
    flow = console.app[CONSOLE_OIDC]
    state, _ = await flow.begin("http://localhost/cb")
    flow._clock = lambda: time.time() + PENDING_SECONDS + 1  # ten minutes later
    with pytest.raises(Unauthorized):
        await flow.finish(state, "some-code", "http://localhost/cb")
    for forged in ("", "x", "abc.def", "-5.abc"):
        with pytest.raises(Unauthorized):
            await flow.finish(forged, "some-code", "http://localhost/cb")
