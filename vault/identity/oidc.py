"""JWT access tokens from the clinic's OpenID Connect provider → the ``Principal`` they name.

The only module that imports PyJWT. A token is accepted when all of these hold (anything else is
``Unauthorized``, the same 401 and message as a bad opaque token; the reason goes to the log):

- its header's ``alg`` is one of ``ALLOWED_ALGORITHMS`` (RS256, ES256, EdDSA) and it names a
  ``kid``. The list is pinned, not read from the token or the key set: ``none`` would accept
  an unsigned token, and an HMAC algorithm would let whoever has the provider's *public* key
  (everyone) sign tokens with it as the secret;
- the provider publishes a key with that ``kid`` (``vault.identity.jwks``), usable for exactly
  that algorithm (a key is bound to one algorithm when parsed; symmetric keys are never parsed);
- the signature verifies; ``iss`` equals ``oidc_issuer``; ``aud`` contains ``oidc_audience``;
  ``exp`` and ``iat`` are present and ``exp``, ``nbf`` (if present) and ``iat`` hold within
  ``oidc_leeway`` seconds of this machine's clock;
- its claims name a user, a tenant and one role (``vault.identity.claims``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jwt

from vault.auth import Principal
from vault.config import Config
from vault.errors import Unauthorized
from vault.identity.claims import ClaimMapping, ClaimRejected
from vault.identity.jwks import JwksCache

log = logging.getLogger(__name__)
ALLOWED_ALGORITHMS = ("RS256", "ES256", "EdDSA")
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud")

# PyJWT's refusals → the word logged for them (closed set; the token itself is never logged).
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "audience"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidSignatureError, "signature"),
    (jwt.InvalidAlgorithmError, "algorithm"),
)


def signing_keys(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """The usable keys of a JWKS document by ``kid``: signature keys with a ``kid`` whose
    algorithm (``alg``, or the one implied by the key type and curve) is allowed. Others are
    skipped, so a provider that also publishes encryption or HMAC keys still works."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise TypeError("not a JWK set")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        if key.algorithm_name in ALLOWED_ALGORITHMS:
            keys[kid] = key
    return keys


class OidcVerifier:
    """Verifies bearer JWTs against the configured issuer; ``close()`` releases its HTTP client."""

    def __init__(self, config: Config) -> None:
        assert config.oidc_issuer is not None and config.oidc_audience is not None
        self._issuer = config.oidc_issuer
        self._audience = config.oidc_audience
        self._leeway = config.oidc_leeway
        self._claims = ClaimMapping.from_config(config)
        self.keys: JwksCache[jwt.PyJWK] = JwksCache(
            issuer=config.oidc_issuer, jwks_url=config.oidc_jwks_url, parse=signing_keys,
            ttl=config.oidc_jwks_cache_ttl, min_refresh=config.oidc_jwks_min_refresh,
            timeout=config.oidc_fetch_timeout,
        )

    async def verify(self, token: str) -> Principal:
        """The caller a JWT names; ``Unauthorized`` if it is not acceptable, or
        ``IdentityProviderUnavailable`` if its key cannot be fetched now."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise _refused("algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _refused("no_kid")
        key = await self.keys.key(kid)
        if key is None:
            raise _refused("unknown_kid")
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self._audience, issuer=self._issuer,
                leeway=self._leeway, options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as exc:
            raise _refused(next((word for kind, word in _REASONS if isinstance(exc, kind)), "invalid")) from None
        try:
            return self._claims.principal(claims)
        except ClaimRejected as exc:
            raise _refused(exc.reason) from None

    async def close(self) -> None:
        await self.keys.close()


def _refused(reason: str) -> Unauthorized:
    log.info("JWT refused: %s", reason)
    return Unauthorized()
