"""The identity provider's signing keys: fetched over HTTP(S) without blocking the event loop,
cached, and fetched again when they are old or a token names a key not yet seen.

Where: ``oidc_jwks_url`` or, when that is unset, the ``jwks_uri`` of the issuer's discovery
document (``<issuer>/.well-known/openid-configuration``), whose ``issuer`` must equal the
configured one exactly (OpenID Connect Discovery 1.0, section 4.3). Both must be https URLs;
plain http is accepted on a loopback address only (a JWKS read over the network in the clear
would let anyone on the path plant a key).

Each fetch is bounded: one total timeout (``oidc_fetch_timeout``) for connect, headers and
body; at most ``MAX_DOCUMENT_BYTES``; no redirects; no proxy settings from the environment.
Concurrent requests that need a fetch share one (a lock, and a re-check after it); while a
stale set is being refreshed, requests whose key it holds use it rather than wait.

When: a key set older than ``oidc_jwks_cache_ttl`` is fetched again on its next use; an
unknown ``kid`` prompts a fetch too (key rotation at the issuer), but at most once per
``oidc_jwks_min_refresh`` seconds, so tokens with invented kids cannot make imagevault hammer
the provider. If a fetch fails, the keys already held stay in use (a provider restart must not
lock every clinician out while their tokens are still valid) and the failure is logged; with no
key for the token's kid and the last fetch failed, the caller gets ``IdentityProviderUnavailable``
(503), since the token may be valid.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp

from vault.errors import IdentityProviderUnavailable

log = logging.getLogger(__name__)
K = TypeVar("K")
MAX_DOCUMENT_BYTES = 256 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"


class FetchFailed(Exception):
    """A discovery or JWKS document could not be had (the message says why, without secrets)."""


def fetchable_url(url: str) -> bool:
    """An https URL, or an http one whose host is a loopback address."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if not parts.hostname:
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


class JwksCache(Generic[K]):
    """The provider's current signing keys by ``kid``, as ``parse`` makes them from the JWKS
    document (``parse`` skips keys it will not use and raises ``ValueError`` or ``TypeError``
    for a document that is not a key set). ``now`` is a monotonic clock in seconds."""

    def __init__(
        self, *, issuer: str, jwks_url: str | None, parse: Callable[[Mapping[str, Any]], dict[str, K]],
        ttl: float, min_refresh: float, timeout: float, now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuer = issuer
        self._jwks_url = jwks_url
        self._parse = parse
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._timeout = timeout
        self._now = now
        self._keys: dict[str, K] | None = None
        self._fetched_at = 0.0  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._failed = False  # the last fetch failed
        self._fetches = 0  # attempts so far: a waiter re-checks it after the lock
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    @property
    def fetches(self) -> int:
        return self._fetches

    async def key(self, kid: str) -> K | None:
        """The key with this ``kid``, or None if the provider does not publish it.

        Raises ``IdentityProviderUnavailable`` when there is no such key and the provider could
        not be asked (the last fetch failed)."""
        seen = self._fetches  # one fetch per call at most, whoever makes it
        if self._keys is None:
            await self._refresh_if_allowed(seen)
        elif self._now() - self._fetched_at >= self._ttl and not self._lock.locked():
            await self._refresh_if_allowed(seen)  # while another request refreshes, the old set serves
        key = self._keys.get(kid) if self._keys is not None else None
        if key is None:
            await self._refresh_if_allowed(seen)
            key = self._keys.get(kid) if self._keys is not None else None
        if key is None and self._failed:
            raise IdentityProviderUnavailable()
        return key

    async def _refresh_if_allowed(self, seen: int) -> None:
        async with self._lock:
            if self._fetches != seen:
                return  # another request fetched while this one waited
            if self._attempted_at is not None and self._now() - self._attempted_at < self._min_refresh:
                return
            self._fetches += 1
            self._attempted_at = self._now()
            try:
                keys = self._parse(await self._fetch_key_set())
            except (FetchFailed, ValueError, TypeError) as exc:
                self._failed = True
                log.warning("OIDC signing keys not fetched (%s); %s", exc,
                            "keeping the previous keys" if self._keys is not None else "no keys yet")
                return
            self._failed = False
            self._keys = keys
            self._fetched_at = self._now()

    async def _fetch_key_set(self) -> Mapping[str, Any]:
        if self._jwks_url is None:
            discovery = await self._get_json(self._issuer.rstrip("/") + DISCOVERY_PATH)
            if discovery.get("issuer") != self._issuer:
                raise FetchFailed("the discovery document names another issuer")
            uri = discovery.get("jwks_uri")
            if not isinstance(uri, str) or not fetchable_url(uri):
                raise FetchFailed("the discovery document has no usable jwks_uri")
            self._jwks_url = uri  # the issuer's keys do not move between restarts
        return await self._get_json(self._jwks_url)

    async def _get_json(self, url: str) -> Mapping[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout), trust_env=False,
            )
        return await fetch_json(self._session, url)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def fetch_json(session: aiohttp.ClientSession, url: str) -> Mapping[str, Any]:
    """A JSON object from ``url``: 200 only, no redirects, at most ``MAX_DOCUMENT_BYTES``;
    ``FetchFailed`` otherwise (the session's timeout bounds it all)."""
    try:
        async with session.get(url, allow_redirects=False, headers={"Accept": "application/json"}) as response:
            if response.status != 200:
                raise FetchFailed(f"HTTP {response.status}")
            if (response.content_length or 0) > MAX_DOCUMENT_BYTES:
                raise FetchFailed("document too large")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise FetchFailed("document too large")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise FetchFailed(exc.__class__.__name__) from exc
    try:
        document = json.loads(bytes(body))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchFailed("not JSON") from exc
    if not isinstance(document, dict):
        raise FetchFailed("not a JSON object")
    return document
