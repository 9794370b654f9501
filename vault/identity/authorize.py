"""Signing in to the web console at the identity provider: OpenID Connect authorization code
flow with PKCE (RFC 7636, ``S256``), as a public client (no client secret).

``begin`` makes a random ``state`` and code verifier, remembers them (in memory, for
``PENDING_SECONDS``) and gives the provider's authorization URL; ``finish`` takes the ``state``
and ``code`` the provider sent the browser back with, redeems the code at the token endpoint with
the verifier and returns the access token, which the caller verifies like any bearer JWT
(vault/identity/oidc.py). Each ``state`` can be finished once. The endpoints come from the
issuer's discovery document (fetched with vault/identity/jwks.py's bounded fetch).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp

from vault.config import Config
from vault.errors import IdentityProviderUnavailable, Unauthorized
from vault.identity.jwks import DISCOVERY_PATH, FetchFailed, fetch_json, fetchable_url

PENDING_SECONDS = 600.0  # from the redirect to the provider until the browser is back
MAX_PENDING = 10000


@dataclass(frozen=True)
class _Pending:
    verifier: str
    redirect_uri: str
    created: float


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class AuthorizationCodeFlow:
    """The console's sign-in at the provider; ``close()`` releases its HTTP client."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        assert config.oidc_issuer is not None and config.console_oidc_client_id is not None
        self._issuer = config.oidc_issuer
        self.client_id = config.console_oidc_client_id
        self._timeout = config.oidc_fetch_timeout
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._endpoints: tuple[str, str] | None = None
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout), trust_env=False)
        return self._session

    async def _discover(self) -> tuple[str, str]:
        if self._endpoints is None:
            try:
                document = await fetch_json(self._client(), self._issuer.rstrip("/") + DISCOVERY_PATH)
            except FetchFailed as exc:
                raise IdentityProviderUnavailable() from exc
            authorization, token = document.get("authorization_endpoint"), document.get("token_endpoint")
            if document.get("issuer") != self._issuer or not all(
                    isinstance(url, str) and fetchable_url(url) for url in (authorization, token)):
                raise IdentityProviderUnavailable("the identity provider's discovery document has no usable endpoints")
            self._endpoints = (authorization, token)  # type: ignore[assignment]
        return self._endpoints  # type: ignore[return-value]

    async def begin(self, redirect_uri: str) -> tuple[str, str]:
        """(state, the URL to send the browser to)."""
        authorization, _ = await self._discover()
        now = self._clock()
        for state in [s for s, p in self._pending.items() if now - p.created > PENDING_SECONDS]:
            del self._pending[state]
        if len(self._pending) >= MAX_PENDING:
            raise IdentityProviderUnavailable("too many sign-ins in progress")
        state, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(64)
        self._pending[state] = _Pending(verifier, redirect_uri, now)
        query = urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri, "scope": "openid",
            "state": state, "code_challenge": _challenge(verifier), "code_challenge_method": "S256",
        })
        return state, f"{authorization}{'&' if '?' in authorization else '?'}{query}"

    async def finish(self, state: str, code: str) -> str:
        """The access token the provider issues for ``code``; ``Unauthorized`` for an unknown,
        used or stale ``state``, or a code the provider does not redeem."""
        pending = self._pending.pop(state, None)
        if pending is None or self._clock() - pending.created > PENDING_SECONDS or not code:
            raise Unauthorized()
        _, token_endpoint = await self._discover()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
                "client_id": self.client_id, "code_verifier": pending.verifier}
        try:
            async with self._client().post(token_endpoint, data=form, allow_redirects=False,
                                           headers={"Accept": "application/json"}) as response:
                if response.status >= 500:
                    raise IdentityProviderUnavailable()
                if response.status != 200:
                    raise Unauthorized()
                document = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise IdentityProviderUnavailable() from exc
        token = document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise Unauthorized()
        return token

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
