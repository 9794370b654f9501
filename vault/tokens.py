"""Bearer tokens at rest: created, listed, revoked and checked against the ``tokens`` database.

Used by the service (authentication of every request) and directly by the CLI (which needs no
key provider to manage tokens). Only SHA-256 hashes of tokens are stored. Creating, listing and
revoking tokens is audited when an ``AuditLog`` is given (token names and roles, never values).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from vault.audit.chain import GLOBAL_SCOPE, AuditAction, AuditEvent
from vault.audit.hooks import cli_actor
from vault.auth import Principal, Role, TokenInfo, check_token_name, looks_like_token, new_token, parse_ttl
from vault.errors import Conflict, ImageVaultError, InvalidRequest, NotFound, Unauthorized
from vault.index import schema
from vault.index.lmdb import Index, IndexTxn
from vault.metadata import format_timestamp

if TYPE_CHECKING:
    from vault.audit.store import AuditLog

T = TypeVar("T")


class TokenStore:
    def __init__(self, index: Index, clock: Callable[[], datetime], audit: AuditLog | None = None) -> None:
        self._index = index
        self._clock = clock
        self._audit = audit

    def _audited(self, action: AuditAction, scope: str, details: dict[str, Any], work: Callable[[], T]) -> T:
        """Run ``work`` and append its outcome (ok or the error code) to the trail. Token
        management has no HTTP endpoint: the actor is the command line (or a test harness)."""
        try:
            result = work()
        except ImageVaultError as exc:
            self._record(action, scope, details, exc.code)
            raise
        self._record(action, scope, details, "ok")
        return result

    def _record(self, action: AuditAction, scope: str, details: dict[str, Any], outcome: str) -> None:
        if self._audit is not None:
            self._audit.append_sync(AuditEvent(action.value, cli_actor(), scope, (), outcome, details))

    def authenticate(self, token: str | None) -> Principal:
        if not token or not looks_like_token(token):
            raise Unauthorized()
        doc = self._index.read(lambda t: t.get_doc(schema.DB_TOKENS, schema.token_key(token)))
        if doc is None:
            raise Unauthorized()
        info = TokenInfo.from_json(doc)
        now = self._clock()
        if info.revoked_at is not None or info.expired(now):
            raise Unauthorized()
        if info.idle_timeout is not None:
            self._touch(token, info, now.timestamp())
        return info.principal

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

    def _prepare(
        self, tenant: str, role: Role, name: str, ttl: str | None, idle_timeout: str | None = None
    ) -> tuple[str, TokenInfo]:
        if not schema.valid_tenant(tenant):
            raise InvalidRequest("tenant must be a lowercase slug (a-z, 0-9, _ or -), at most 63 characters")
        check_token_name(name)
        lifetime = parse_ttl(ttl)
        now = self._clock()
        idle = parse_ttl(idle_timeout)
        info = TokenInfo(
            name=name, tenant=tenant, role=role, created_at=format_timestamp(now),
            expires_at=format_timestamp(now + lifetime) if lifetime else None,
            idle_timeout=int(idle.total_seconds()) if idle else None,
            last_used_at=now.timestamp() if idle else None,
        )
        return new_token(), info

    @staticmethod
    def _insert(token: str, info: TokenInfo) -> Callable[[IndexTxn], None]:
        def insert(txn: IndexTxn) -> None:
            for _, doc in txn.iter_docs(schema.DB_TOKENS):
                if doc["name"] == info.name and doc.get("revoked_at") is None:
                    raise Conflict("an active token with this name already exists")
            txn.put_doc(schema.DB_TOKENS, schema.token_key(token), info.to_json())

        return insert

    async def create(
        self, tenant: str, role: Role, name: str, ttl: str | None = None, idle_timeout: str | None = None
    ) -> tuple[str, TokenInfo]:
        return await asyncio.to_thread(self.create_sync, tenant, role, name, ttl, idle_timeout)

    def create_sync(
        self, tenant: str, role: Role, name: str, ttl: str | None = None, idle_timeout: str | None = None
    ) -> tuple[str, TokenInfo]:
        scope = tenant if schema.valid_tenant(tenant) else GLOBAL_SCOPE
        details = {"token_name": _safe_name(name), "role": role.value}

        def work() -> tuple[str, TokenInfo]:
            token, info = self._prepare(tenant, role, name, ttl, idle_timeout)
            self._index.write_sync(self._insert(token, info))
            details.update(_token_details(info))
            return token, info

        return self._audited(AuditAction.TOKEN_CREATE, scope, details, work)

    def list(self) -> list[TokenInfo]:
        return self._audited(AuditAction.TOKEN_LIST, GLOBAL_SCOPE, {}, lambda: self._index.read(
            lambda t: sorted(
                (TokenInfo.from_json(doc) for _, doc in t.iter_docs(schema.DB_TOKENS)),
                key=lambda i: (i.created_at, i.name),
            )
        ))

    def _revoke(self, name: str) -> Callable[[IndexTxn], int]:
        stamp = format_timestamp(self._clock())

        def revoke(txn: IndexTxn) -> int:
            count = 0
            for key, doc in list(txn.iter_docs(schema.DB_TOKENS)):
                if doc["name"] == name and doc.get("revoked_at") is None:
                    doc["revoked_at"] = stamp
                    txn.put_doc(schema.DB_TOKENS, key, doc)
                    count += 1
            if not count:
                raise NotFound("no active token with this name")
            return count

        return revoke

    async def revoke(self, name: str) -> int:
        return await asyncio.to_thread(self.revoke_sync, name)

    def revoke_sync(self, name: str) -> int:
        details = {"token_name": _safe_name(name)}
        return self._audited(
            AuditAction.TOKEN_REVOKE, GLOBAL_SCOPE, details, lambda: self._index.write_sync(self._revoke(name)),
        )


def _safe_name(name: str) -> str:
    """A token name as the trail may keep it: only names the token rules accept."""
    try:
        return check_token_name(name)
    except InvalidRequest:
        return "<invalid>"


def _token_details(info: TokenInfo) -> dict[str, Any]:
    return {"token_name": info.name, "role": info.role.value, "expires_at": info.expires_at}
