"""Roles, permissions and bearer tokens: who may do what, decided in this one place.

Tokens are 32 random bytes (``ivt_`` + base64url), shown once at creation and stored only as
their SHA-256 (the ``tokens`` database is keyed by it). Lookup by hash needs no constant-time
comparison: the attacker does not control the stored value's preimage and a 256-bit random
token cannot be found by timing the hash's position in a B-tree.

A bearer credential is either such an opaque token or a JWT access token from the clinic's
identity provider (``vault.identity.oidc``); they are told apart by shape alone. A token created
with the ``on_behalf`` right may name the human it acts for (``X-On-Behalf-Of``); the principal
then carries both, and so does every audit entry.
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
    ADMIN = "admin"  # the deployment's administrator: no tenant (ADMIN_TENANT), sees every one


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
    ACCESS_REPORT = "access_report"
    OPERATE = "operate"  # a tenant's own operations: its statistics, its retention sweep
    ADMIN = "admin"  # operations on the whole deployment: keys, epochs, backups, tokens, gc
    AUDIT = "audit"


_C, _D, _R, _O, _A, _X = Role.CLINICIAN, Role.DPO, Role.RESEARCHER, Role.OPERATOR, Role.AUDITOR, Role.ADMIN
# The tenant of every admin token and of the command line: "-" can never be a tenant slug (a
# slug starts with a letter or a digit), and it is the audit trail's global scope, so what an
# admin does is recorded where only admins read.
ADMIN_TENANT = "-"

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
    Action.ACCESS_REPORT: frozenset({_D}),
    Action.OPERATE: frozenset({_O, _X}),
    Action.ADMIN: frozenset({_X}),
    Action.AUDIT: frozenset({_A, _X}),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")
# A person's name as the trail keeps it: a login, an e-mail address or an IdP subject
# (Keycloak's are UUIDs, Auth0's "provider|id"), never free text.
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@|:+\-]{0,127}")
# Three base64url segments (JWS compact serialisation); the signature may be empty so that an
# unsigned ``alg: none`` token reaches the verifier and is refused there, with a reason logged.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_JWT_LENGTH = 8192
TOKEN_PREFIX = "ivt_"
VIA_TOKEN = "token"  # an opaque token (or the command line, the daemon itself)
VIA_OIDC = "oidc"  # a JWT access token from the identity provider


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request.

    ``name`` is the token's name, or the JWT's subject (``via`` says which). ``on_behalf_of``
    is the human an application token acts for (``X-On-Behalf-Of``), which it may name only
    with the right ``can_act_on_behalf`` (the token's ``on_behalf`` field).
    """

    tenant: str
    role: Role
    name: str
    on_behalf_of: str | None = None
    via: str = VIA_TOKEN
    can_act_on_behalf: bool = False

    @property
    def sees_personal_data(self) -> bool:
        return self.role is not Role.RESEARCHER

    @property
    def sees_all_tenants(self) -> bool:
        """An admin's view: every tenant's statistics, sweeps and audit entries."""
        return self.role is Role.ADMIN

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
    on_behalf: bool = False  # may name the user it acts for (X-On-Behalf-Of)

    @property
    def principal(self) -> Principal:
        return Principal(self.tenant, self.role, self.name, can_act_on_behalf=self.on_behalf)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name, "tenant": self.tenant, "role": self.role.value,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "revoked_at": self.revoked_at, "idle_timeout": self.idle_timeout,
            "last_used_at": self.last_used_at, "on_behalf": self.on_behalf,
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> TokenInfo:
        return cls(
            name=str(doc["name"]), tenant=str(doc["tenant"]), role=Role(doc["role"]),
            created_at=str(doc["created_at"]), expires_at=doc.get("expires_at"),  # type: ignore[arg-type]
            revoked_at=doc.get("revoked_at"), idle_timeout=doc.get("idle_timeout"),  # type: ignore[arg-type]
            last_used_at=doc.get("last_used_at"),  # type: ignore[arg-type]
            on_behalf=doc.get("on_behalf") is True,  # absent in documents older than the right
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


def looks_like_jwt(text: str) -> bool:
    return len(text) <= MAX_JWT_LENGTH and _JWT_SHAPE.fullmatch(text) is not None


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError as exc:
        raise InvalidRequest("role must be one of " + ", ".join(r.value for r in Role)) from exc


def check_token_tenant(tenant: str | None, role: Role) -> str:
    """The tenant a new token gets: an admin token none (``ADMIN_TENANT``), any other one the
    tenant given (checked as a slug by the caller)."""
    if role is Role.ADMIN:
        if tenant not in (None, "", ADMIN_TENANT):
            raise InvalidRequest("an admin token has no tenant")
        return ADMIN_TENANT
    if not tenant or tenant == ADMIN_TENANT:
        raise InvalidRequest("a token of this role needs a tenant")
    return tenant


def check_token_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidRequest("token name must be 1-64 characters of letters, digits, _ . @ -")
    return name


def check_user_name(name: str) -> str:
    """A user's name as an application names it (``X-On-Behalf-Of``) or a JWT claim holds it."""
    if not _USER_NAME.fullmatch(name):
        raise InvalidRequest("user name must be 1-128 characters of letters, digits, _ . @ | : + - "
                             "starting with a letter or digit")
    return name


def valid_user_name(name: object) -> bool:
    return isinstance(name, str) and _USER_NAME.fullmatch(name) is not None
