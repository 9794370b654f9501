"""A test OpenID Connect issuer: keys generated in the test, a discovery document and a JWKS
served by a real aiohttp server on loopback, and tokens signed with PyJWT.

``mode`` switches the key endpoint between answering (``ok``), failing (``error``: HTTP 500)
and never answering in time (``hang``); ``fetches`` counts JWKS requests that were answered or
attempted, so tests can see when imagevault fetched.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

AUDIENCE = "imagevault"
REALM = "/realms/clinic"


def new_private_key(alg: str) -> Any:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Issuer:
    keys: dict[str, tuple[str, Any]] = field(default_factory=dict)  # kid -> (alg, private key)
    published: list[str] = field(default_factory=list)  # kids in the JWKS
    mode: str = "ok"  # ok | error | hang
    fetches: int = 0
    discovery_fetches: int = 0
    discovery_issuer: str | None = None  # what the discovery document claims (default: the truth)
    url: str = ""
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends a hanging answer
    # The authorization code flow: codes issued by the authorization endpoint (which signs the
    # user in at once as ``login_claims``), each with its PKCE challenge and redirect URI.
    codes: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    login_claims: dict[str, Any] = field(default_factory=dict)
    client_id: str = "imagevault-console"

    def add_key(self, alg: str, *, publish: bool = True) -> str:
        kid = f"{alg.lower()}-{secrets.token_hex(4)}"
        self.keys[kid] = (alg, new_private_key(alg))
        if publish:
            self.published.append(kid)
        return kid

    def public_pem(self, kid: str) -> bytes:
        return self.keys[kid][1].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
        )

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid in self.published:
            alg, key = self.keys[kid]
            jwk = jwt.get_algorithm_by_name(alg).to_jwk(key.public_key(), as_dict=True)
            out.append({**jwk, "kid": kid, "use": "sig", "alg": alg})
        return {"keys": out}

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url, "aud": AUDIENCE, "sub": "dr.jones", "iat": now, "exp": now + 300,
            "tenant": "clinic-a", "roles": ["offline_access", "clinician"],
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str | None = None, **changes: Any) -> str:
        kid = kid or self.published[0]
        alg, key = self.keys[kid]
        return jwt.encode(self.claims(**changes), key, algorithm=alg, headers={"kid": kid})

    @staticmethod
    def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
        head = b64url(json.dumps(header).encode())
        body = b64url(json.dumps(claims).encode())
        return f"{head}.{body}.{b64url(signature)}"

    def hs256_with_public_key(self, kid: str) -> str:
        """The key-confusion attack: HS256 "signed" with the issuer's public key as the secret."""
        head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        body = b64url(json.dumps(self.claims()).encode())
        mac = hmac.new(self.public_pem(kid), f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64url(mac)}"

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            self.discovery_fetches += 1
            return web.json_response({
                "issuer": self.discovery_issuer or self.url, "jwks_uri": f"{self.url}/protocol/openid-connect/certs",
                "authorization_endpoint": f"{self.url}/protocol/openid-connect/auth",
                "token_endpoint": f"{self.url}/protocol/openid-connect/token",
            })

        async def authorize(request: web.Request) -> web.Response:
            query = request.query
            if query.get("client_id") != self.client_id or query.get("code_challenge_method") != "S256" \
                    or query.get("response_type") != "code":
                return web.json_response({"error": "invalid_request"}, status=400)
            code = secrets.token_urlsafe(16)
            self.codes[code] = (query["code_challenge"], query["redirect_uri"], query["client_id"])
            sep = "&" if "?" in query["redirect_uri"] else "?"
            raise web.HTTPFound(f"{query['redirect_uri']}{sep}code={code}&state={query['state']}")

        async def redeem(request: web.Request) -> web.Response:
            form = await request.post()
            issued = self.codes.pop(str(form.get("code", "")), None)  # a code is redeemed once
            verifier = str(form.get("code_verifier", ""))
            if issued is None or form.get("grant_type") != "authorization_code" \
                    or b64url(hashlib.sha256(verifier.encode()).digest()) != issued[0] \
                    or form.get("redirect_uri") != issued[1] or form.get("client_id") != issued[2]:
                return web.json_response({"error": "invalid_grant"}, status=400)
            return web.json_response({"access_token": self.token(**self.login_claims), "token_type": "Bearer"})

        async def certs(request: web.Request) -> web.Response:
            self.fetches += 1
            if self.mode == "error":
                return web.json_response({"error": "down"}, status=500)
            if self.mode == "hang":
                await asyncio.wait_for(self.released.wait(), 30)
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get(f"{REALM}/.well-known/openid-configuration", discovery)
        app.router.add_get(f"{REALM}/protocol/openid-connect/certs", certs)
        app.router.add_get(f"{REALM}/protocol/openid-connect/auth", authorize)
        app.router.add_post(f"{REALM}/protocol/openid-connect/token", redeem)
        return app

    def release(self) -> None:
        self.released.set()

    async def start(self, aiohttp_server: Any) -> Issuer:
        server = await aiohttp_server(self.app())
        self.url = str(server.make_url(REALM))
        return self
