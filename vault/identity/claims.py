"""What a verified JWT's claims say about the caller: its tenant, role and name, by configuration.

No cryptography and no I/O: ``vault.identity.oidc`` verifies the token first and hands the
claims here. The rules (docs/api.md, "Authentication"):

- the **name** claim (``oidc_name_claim``, default ``sub``: the one identifier OpenID Connect
  promises is stable and never reassigned) must be a user name as ``check_user_name`` accepts;
- the **tenant** claim is one string: mapped through ``oidc_tenant_map`` when that is set (a
  value not in the map is refused), else taken as the tenant slug itself;
- the **role** claim is a string or a list of strings (IdPs send groups and roles as lists):
  every value is mapped through ``oidc_role_map`` when that is set, else read as a role name;
  values that name no role are ignored, and exactly one distinct role must remain. Two roles
  are refused rather than resolved: picking the stronger would grant more than the clinic may
  have meant, picking the weaker would surprise it, and either would be a silent policy.
  Only the roles in ``IDP_ROLES`` can be granted this way: an identity provider speaks for one
  clinic, so a role that acts beyond one tenant is never taken from its tokens (a role added to
  ``Role`` later is not in the list until someone decides it belongs there).

A claim name is looked up as written first and, if absent, as a dotted path into nested objects
(``realm_access.roles`` in Keycloak), so namespaced claims such as ``https://clinic/roles`` work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vault.auth import VIA_OIDC, Principal, Role, valid_user_name
from vault.index.schema import valid_tenant
from vault.values import tenant_pairs

if TYPE_CHECKING:
    from vault.config import Config


IDP_ROLES = frozenset({Role.CLINICIAN, Role.DPO, Role.RESEARCHER, Role.OPERATOR, Role.AUDITOR})


class ClaimRejected(ValueError):
    """The claims do not name a caller imagevault accepts; ``reason`` is one short word (for
    the log, never the client: it would tell a token's holder what to change)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def parse_claim_map(spec: str | Mapping[str, object], what: str) -> dict[str, str]:
    """``"idp-value=target, ..."`` (environment) or a TOML table → mapping (``ValueError`` if malformed)."""
    out: dict[str, str] = {}
    for key, value in tenant_pairs(spec, what):
        if not key or not str(value):
            raise ValueError(f"each entry needs an IdP value and a {what.lower()}")
        out[key] = str(value)
    return out


@dataclass(frozen=True)
class ClaimMapping:
    tenant_claim: str
    role_claim: str
    name_claim: str
    tenant_map: Mapping[str, str]  # IdP value -> tenant; empty: the value is the tenant
    role_map: Mapping[str, Role]  # IdP value -> role; empty: the value is a role name

    @classmethod
    def from_config(cls, config: Config) -> ClaimMapping:
        tenants = parse_claim_map(config.oidc_tenant_map, "TENANT")
        for tenant in tenants.values():
            if not valid_tenant(tenant):
                raise ValueError("oidc_tenant_map maps to a name that is not a tenant slug")
        roles: dict[str, Role] = {}
        for value, role in parse_claim_map(config.oidc_role_map, "ROLE").items():
            try:
                roles[value] = Role(role)
            except ValueError as exc:
                raise ValueError("oidc_role_map maps to a name that is not a role") from exc
            if roles[value] not in IDP_ROLES:
                raise ValueError(f"oidc_role_map may not grant the role {role}")
        return cls(config.oidc_tenant_claim, config.oidc_role_claim, config.oidc_name_claim, tenants, roles)

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        """The caller the claims name (``ClaimRejected`` if they name none)."""
        name = claim(claims, self.name_claim)
        if not valid_user_name(name):
            raise ClaimRejected("name")
        return Principal(self.tenant(claims), self.role(claims), name, via=VIA_OIDC)

    def tenant(self, claims: Mapping[str, Any]) -> str:
        value = claim(claims, self.tenant_claim)
        if not isinstance(value, str):
            raise ClaimRejected("tenant")
        tenant = self.tenant_map.get(value) if self.tenant_map else value
        if tenant is None or not valid_tenant(tenant):
            raise ClaimRejected("tenant")
        return tenant

    def role(self, claims: Mapping[str, Any]) -> Role:
        value = claim(claims, self.role_claim)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        roles = {role for role in (self._role_of(v) for v in values if isinstance(v, str)) if role is not None}
        if not roles:
            raise ClaimRejected("role")
        if len(roles) > 1:
            raise ClaimRejected("roles_ambiguous")
        return roles.pop()

    def _role_of(self, value: str) -> Role | None:
        if self.role_map:
            return self.role_map.get(value)
        try:
            role = Role(value)
        except ValueError:
            return None
        return role if role in IDP_ROLES else None


def claim(claims: Mapping[str, Any], name: str) -> Any:
    """The claim as written, else the dotted path through nested objects (None if absent)."""
    if name in claims:
        return claims[name]
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
