"""Bearer tokens at rest: created, listed, revoked and checked against the ``tokens`` database.

Only SHA-256 hashes of tokens are stored; a token's value is shown once, at creation. Token
management has no HTTP endpoint: the command line calls it through the facade, which checks
the operator's permission and audits each call (token names and roles, never values).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vault.audit.chain import GLOBAL_SCOPE
from vault.audit.hooks import note
from vault.auth import (
    ADMIN_TENANT, Principal, Role, TokenInfo, check_token_name, check_token_tenant, looks_like_token, new_token,
)
from vault.errors import Conflict, IndexTampered, InvalidRequest, NotFound, Unauthorized
from vault.index import schema
from vault.index.integrity import IndexSeal
from vault.index.engine import IndexEngine, IndexTxn
from vault.metadata import format_timestamp
from vault.values import parse_duration

log = logging.getLogger(__name__)

DEFAULT_TTL = "90d"


@dataclass(frozen=True)
class Revocation:
    count: int  # tokens revoked
    audit_scope: str  # the revoked tokens' tenant (their auditors see the entry)


class TokenService:
    def __init__(self, index: IndexEngine, clock: Callable[[], datetime]) -> None:
        self._index = index
        self._clock = clock

    def authenticate(self, token: str | None) -> Principal:
        if not token or not looks_like_token(token):
            raise Unauthorized()
        key = schema.token_key(token)
        doc = self._index.read(lambda t: t.get_doc(schema.DB_TOKENS, key))
        if doc is None:
            raise Unauthorized()
        info = TokenInfo.from_json(self._seal().check_token(key, doc))  # IndexTampered: the caller refuses
        now = self._clock()
        if info.revoked_at is not None or info.expired(now):
            raise Unauthorized()
        if info.idle_timeout is not None:
            self._touch(token, info, now.timestamp())
        return info.principal

    def _seal(self) -> IndexSeal:
        if self._index.seal is None:
            raise RuntimeError("index opened without its integrity key")
        return self._index.seal

    def _touch(self, token: str, info: TokenInfo, now: float) -> None:
        """Record use for the idle limit; written at most every tenth of the limit (cheap)."""
        if info.last_used_at is not None and now - info.last_used_at < min(60.0, info.idle_timeout / 10):  # type: ignore[operator]
            return
        key = schema.token_key(token)

        def touch(txn: IndexTxn) -> None:
            doc = txn.get_doc(schema.DB_TOKENS, key)
            if doc is not None and (doc.get("last_used_at") or 0) < now:
                doc["last_used_at"] = now
                txn.put_doc(schema.DB_TOKENS, key, doc)

        self._index.submit(touch)

    async def create(
        self, tenant: str | None, role: Role, name: str, ttl: str | None = None, idle_timeout: str | None = None,
        on_behalf: bool = False,
    ) -> tuple[str, TokenInfo]:
        """A new token (its value, returned once) and what is stored about it. An admin token
        has no tenant (``ADMIN_TENANT``); every other one needs one. ``on_behalf``: the token
        may name the user it acts for in each request (``X-On-Behalf-Of``)."""
        note(token_name=safe_token_name(name), role=role.value, on_behalf=on_behalf)
        tenant = check_token_tenant(tenant, role)
        if tenant != ADMIN_TENANT and not schema.valid_tenant(tenant):
            raise InvalidRequest("tenant must be a lowercase slug (a-z, 0-9, _ or -), at most 63 characters")
        check_token_name(name)
        # A forgotten token must not live forever: no lifetime given means the default one;
        # "never" stays possible, on purpose, and the audit entry says so (expires_at null).
        lifetime = parse_duration(DEFAULT_TTL if ttl is None else ttl)
        now = self._clock()
        idle = parse_duration(idle_timeout)
        info = TokenInfo(
            name=name, tenant=tenant, role=role, created_at=format_timestamp(now),
            expires_at=format_timestamp(now + lifetime) if lifetime else None,
            idle_timeout=int(idle.total_seconds()) if idle else None,
            last_used_at=now.timestamp() if idle else None, on_behalf=on_behalf,
        )
        token = new_token()

        def insert(txn: IndexTxn) -> None:
            for _, doc in _authentic(txn):
                if doc["name"] == info.name and doc.get("revoked_at") is None:
                    raise Conflict("an active token with this name already exists")
            key = schema.token_key(token)
            txn.put_doc(schema.DB_TOKENS, key, txn.seal.seal_token(key, info.to_json()))

        await self._index.write(insert)
        note(expires_at=info.expires_at)
        return token, info

    def list(self, tenant: str | None = None) -> list[TokenInfo]:
        """Every token, or one tenant's (``ADMIN_TENANT``: the admin tokens)."""
        return self._index.read(
            lambda t: sorted(
                (info for info in (TokenInfo.from_json(doc) for _, doc in _authentic(t))
                 if tenant is None or info.tenant == tenant),
                key=lambda i: (i.created_at, i.name),
            )
        )

    async def revoke(self, name: str) -> Revocation:
        """Revoke every active token with this name (``NotFound`` if none). Names are unique
        among active tokens, so the revoked ones share one tenant."""
        note(token_name=safe_token_name(name))
        stamp = format_timestamp(self._clock())

        def revoke(txn: IndexTxn) -> Revocation:
            count = 0
            scope = GLOBAL_SCOPE
            for key, doc in list(_authentic(txn)):
                if doc["name"] == name and doc.get("revoked_at") is None:
                    txn.put_doc(schema.DB_TOKENS, key, txn.seal.seal_token(key, {**doc, "revoked_at": stamp}))
                    count += 1
                    scope = token_scope(str(doc["tenant"]))
            if not count:
                raise NotFound("no active token with this name")
            return Revocation(count, scope)

        return await self._index.write(revoke)


def _authentic(txn: IndexTxn) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Token documents whose seal holds; the others are counted (by the seal) and left out:
    a tampered document never lists, blocks a name, or gets revoked and sealed afresh."""
    for key, doc in txn.iter_docs(schema.DB_TOKENS):
        try:
            yield key, txn.seal.check_token(key, doc)
        except IndexTampered:
            log.error("token document %s… failed its integrity check", key.hex()[:12])


def token_scope(tenant: str | None = None, *_: Any, **__: Any) -> str:
    """The audit scope of a token operation: its tenant's auditors see it (global for admin
    tokens, for all tenants at once, or for an invalid tenant)."""
    return tenant if tenant is not None and schema.valid_tenant(tenant) else GLOBAL_SCOPE


def safe_token_name(name: str) -> str:
    """A token name as the trail may keep it: only names the token rules accept."""
    try:
        return check_token_name(name)
    except InvalidRequest:
        return "<invalid>"
