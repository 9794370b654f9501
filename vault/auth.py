"""Roles, permissions and bearer tokens: who may do what, decided in this one place.

Tokens are 32 random bytes (``ivt_`` + base64url), shown once at creation and stored only as
their SHA-256 (the ``tokens`` database is keyed by it). Lookup by hash needs no constant-time
comparison: the attacker does not control the stored value's preimage and a 256-bit random
token cannot be found by timing the hash's position in a B-tree.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from vault.errors import Forbidden, InvalidRequest


class Role(str, Enum):
    CLINICIAN = "clinician"
    DPO = "dpo"
    RESEARCHER = "researcher"
    OPERATOR = "operator"
    AUDITOR = "auditor"


class Action(str, Enum):
    UPLOAD = "upload"
    READ = "read"
    SEARCH = "search"
    UPDATE = "update"
    RECTIFY_PATIENT = "rectify_patient"
    DELETE = "delete"
    OVERRIDE_RETENTION = "override_retention"
    ERASE_PATIENT = "erase_patient"
    LEGAL_HOLD = "legal_hold"
    EXPORT = "export"
    ADMIN = "admin"
    AUDIT = "audit"


_C, _D, _R, _O, _A = Role.CLINICIAN, Role.DPO, Role.RESEARCHER, Role.OPERATOR, Role.AUDITOR

PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.UPLOAD: frozenset({_C, _D}),
    Action.READ: frozenset({_C, _D, _R}),
    Action.SEARCH: frozenset({_C, _D, _R}),
    Action.UPDATE: frozenset({_C, _D}),
    Action.RECTIFY_PATIENT: frozenset({_D}),
    Action.DELETE: frozenset({_C, _D}),
    Action.OVERRIDE_RETENTION: frozenset({_D}),
    Action.ERASE_PATIENT: frozenset({_D}),
    Action.LEGAL_HOLD: frozenset({_D}),
    Action.EXPORT: frozenset({_D}),
    Action.ADMIN: frozenset({_O}),
    Action.AUDIT: frozenset({_A}),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")
TOKEN_PREFIX = "ivt_"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    tenant: str
    role: Role
    name: str

    @property
    def sees_personal_data(self) -> bool:
        return self.role is not Role.RESEARCHER

    def may(self, action: Action) -> bool:
        return self.role in PERMISSIONS[action]

    def require(self, action: Action) -> None:
        if not self.may(action):
            raise Forbidden()


@dataclass(frozen=True)
class TokenInfo:
    name: str
    tenant: str
    role: Role
    created_at: str
    expires_at: str | None
    revoked_at: str | None = None
    idle_timeout: int | None = None  # seconds; None = no idle limit
    last_used_at: float | None = None  # epoch seconds, kept only for tokens with an idle limit

    @property
    def principal(self) -> Principal:
        return Principal(self.tenant, self.role, self.name)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name, "tenant": self.tenant, "role": self.role.value,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "revoked_at": self.revoked_at, "idle_timeout": self.idle_timeout,
            "last_used_at": self.last_used_at,
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> TokenInfo:
        return cls(
            name=str(doc["name"]), tenant=str(doc["tenant"]), role=Role(doc["role"]),
            created_at=str(doc["created_at"]), expires_at=doc.get("expires_at"),  # type: ignore[arg-type]
            revoked_at=doc.get("revoked_at"), idle_timeout=doc.get("idle_timeout"),  # type: ignore[arg-type]
            last_used_at=doc.get("last_used_at"),  # type: ignore[arg-type]
        )

    def expired(self, now: datetime) -> bool:
        if self.idle_timeout is not None and self.last_used_at is not None:
            if now.timestamp() - self.last_used_at > self.idle_timeout:
                return True
        if self.expires_at is None:
            return False
        return now >= datetime.fromisoformat(self.expires_at.replace("Z", "+00:00"))


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def looks_like_token(text: str) -> bool:
    return text.startswith(TOKEN_PREFIX) and 20 <= len(text) <= 100 and text.isascii()


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError as exc:
        raise InvalidRequest("role must be one of " + ", ".join(r.value for r in Role)) from exc


def check_token_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidRequest("token name must be 1-64 characters of letters, digits, _ . @ -")
    return name
