"""Signing in to the web console at the identity provider: OpenID Connect authorization code
flow with PKCE (RFC 7636, ``S256``), as a public client (no client secret).

``begin`` makes a random ``state`` (with the time it was made) and gives the provider's
authorization URL; ``finish`` takes the ``state`` and ``code`` the provider sent the browser back
with, redeems the code at the token endpoint with the verifier and returns the access token,
which the caller verifies like any bearer JWT (vault/identity/oidc.py). Nothing is remembered
between the two: the code verifier is a keyed hash of the state and the redirect URI under a key
every daemon process over the same data directory shares (``verifier_of``, from the index
integrity key), so the browser may come back to another worker than the one it left from. The
state is bound to the browser by its cookie (vault/api/handlers/session.py), which the callback
deletes, and the provider redeems a code once; a state older than ``PENDING_SECONDS`` is refused. The endpoints come from the
issuer's discovery document (fetched with vault/identity/jwks.py's bounded fetch).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlencode

import aiohttp

from vault.config import Config
from vault.errors import IdentityProviderUnavailable, Unauthorized
from vault.identity.jwks import DISCOVERY_PATH, FetchFailed, fetch_json, fetchable_url

PENDING_SECONDS = 600.0  # from the redirect to the provider until the browser is back


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class AuthorizationCodeFlow:
    """The console's sign-in at the provider; ``close()`` releases its HTTP client."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time,
                 verifier_of: Callable[[str], str] | None = None) -> None:
        assert config.oidc_issuer is not None and config.console_oidc_client_id is not None
        self._issuer = config.oidc_issuer
        self.client_id = config.console_oidc_client_id
        self._timeout = config.oidc_fetch_timeout
        self._clock = clock  # epoch seconds: the state's time is read by whichever process finishes
        self.verifier_of = verifier_of  # set once the service has opened (the shared key)
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
        state = f"{int(self._clock())}.{secrets.token_urlsafe(32)}"
        verifier = self._verifier(state, redirect_uri)
        query = urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri, "scope": "openid",
            "state": state, "code_challenge": _challenge(verifier), "code_challenge_method": "S256",
        })
        return state, f"{authorization}{'&' if '?' in authorization else '?'}{query}"

    def _verifier(self, state: str, redirect_uri: str) -> str:
        if self.verifier_of is None:
            raise IdentityProviderUnavailable("sign-in at the identity provider is not ready")
        return self.verifier_of(f"{state}\x00{redirect_uri}")

    async def finish(self, state: str, code: str, redirect_uri: str) -> str:
        """The access token the provider issues for ``code``; ``Unauthorized`` for a malformed or
        stale ``state``, or a code the provider does not redeem (a used one, one issued for
        another challenge or redirect URI). The caller has checked that ``state`` is this
        browser's."""
        made, _, rest = state.partition(".")
        if not made.isdigit() or not rest or not 0 <= self._clock() - int(made) <= PENDING_SECONDS or not code:
            raise Unauthorized()
        _, token_endpoint = await self._discover()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "client_id": self.client_id, "code_verifier": self._verifier(state, redirect_uri)}
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
