"""Claims → tenant, role and user name (vault/identity/claims.py), and the OIDC settings' checks."""

from __future__ import annotations

import pytest

from vault.auth import VIA_OIDC, Role, looks_like_jwt
from vault.config import ConfigError, load_config
from vault.identity.claims import IDP_ROLES, ClaimMapping, ClaimRejected
from vault.identity.jwks import fetchable_url

OIDC = {"IMAGEVAULT_OIDC_ISSUER": "https://idp.example/realms/clinic", "IMAGEVAULT_OIDC_AUDIENCE": "imagevault"}


def mapping(**env: str) -> ClaimMapping:
    return ClaimMapping.from_config(load_config(environ={**OIDC, **env}))


def test_defaults_read_sub_tenant_and_roles():
    principal = mapping().principal({"sub": "u-1", "tenant": "clinic-a", "roles": ["uma_authorization", "dpo"]})
    assert (principal.name, principal.tenant, principal.role, principal.via) == ("u-1", "clinic-a", Role.DPO, VIA_OIDC)
    assert principal.on_behalf_of is None and not principal.can_act_on_behalf


def test_a_claim_name_is_read_as_written_before_it_is_read_as_a_path():
    m = mapping(IMAGEVAULT_OIDC_ROLE_CLAIM="https://clinic.example/roles", IMAGEVAULT_OIDC_TENANT_CLAIM="org.slug")
    claims = {"sub": "u", "https://clinic.example/roles": "auditor", "org": {"slug": "clinic-b"}}
    assert (m.role(claims), m.tenant(claims)) == (Role.AUDITOR, "clinic-b")


@pytest.mark.parametrize(("claims", "reason"), [
    ({"roles": "clinician, dpo"}, "role"),
    ({"roles": ["clinician", "dpo"]}, "roles_ambiguous"),
    ({"roles": ["clinician", "clinician"]}, None),
    ({"roles": [{"name": "clinician"}]}, "role"),
    ({"roles": None}, "role"),
    ({"tenant": ["clinic-a"]}, "tenant"),
    ({"tenant": "clinic-a/../b"}, "tenant"),
    ({"sub": 42}, "name"),
    ({"sub": "a" * 129}, "name"),
    ({"sub": "alice\n"}, "name"),
])
def test_claims_that_name_no_single_caller_are_rejected(claims, reason):
    full = {"sub": "alice", "tenant": "clinic-a", "roles": "clinician", **claims}
    if reason is None:
        assert mapping().principal(full).role is Role.CLINICIAN
        return
    with pytest.raises(ClaimRejected) as caught:
        mapping().principal(full)
    assert caught.value.reason == reason


def test_with_a_role_map_only_mapped_values_count():
    m = mapping(IMAGEVAULT_OIDC_ROLE_MAP="Dermatology=clinician, Privacy=dpo")
    assert m.role({"roles": ["Dermatology", "auditor"]}) is Role.CLINICIAN
    with pytest.raises(ClaimRejected):
        m.role({"roles": ["clinician"]})


@pytest.mark.parametrize(("env", "message"), [
    ({"IMAGEVAULT_OIDC_ISSUER": "http://idp.example/realms/clinic"}, "https"),
    ({"IMAGEVAULT_OIDC_ISSUER": "idp.example"}, "https"),
    ({"IMAGEVAULT_OIDC_JWKS_URL": "http://10.0.0.5/certs"}, "oidc_jwks_url"),
    ({"IMAGEVAULT_OIDC_AUDIENCE": ""}, "oidc_audience"),
    ({"IMAGEVAULT_OIDC_ROLE_MAP": "Dermatology=surgeon"}, "not a role"),
    ({"IMAGEVAULT_OIDC_TENANT_MAP": "org-1=Clinic A"}, "tenant slug"),
    ({"IMAGEVAULT_OIDC_TENANT_MAP": "org-1"}, "malformed"),
    ({"IMAGEVAULT_OIDC_FETCH_TIMEOUT": "0"}, "positive"),
    ({"IMAGEVAULT_OIDC_LEEWAY": "3600"}, "oidc_leeway"),
    ({"IMAGEVAULT_OIDC_NAME_CLAIM": ""}, "empty"),
])
def test_bad_oidc_settings_stop_the_command(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(environ={**OIDC, **env})


def test_oidc_settings_from_toml_tables(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('oidc_issuer = "http://127.0.0.1:8443/realms/x"\noidc_audience = "iv"\n'
                    '[oidc_role_map]\nDermatology = "clinician"\n')
    config = load_config(config_file=path, environ={})
    assert ClaimMapping.from_config(config).role_map == {"Dermatology": Role.CLINICIAN}


@pytest.mark.parametrize(("url", "ok"), [
    ("https://idp.example/x", True), ("http://127.0.0.1:8080/x", True), ("http://[::1]:80/", True),
    ("http://localhost/x", True), ("http://idp.example/x", False), ("ftp://idp.example/", False), ("https://", False),
])
def test_only_https_or_loopback_http_is_fetched(url, ok):
    assert fetchable_url(url) is ok


@pytest.mark.parametrize(("text", "ok"), [
    ("eyJh.eyJz.c2ln", True), ("eyJh.eyJz.", True), ("ivt_" + "a" * 43, False), ("a.b", False), ("a.b.c.d", False),
    ("a.b.c\n", False), ("a+b.c.d", False), ("a" * 9000 + ".b.c", False),
])
def test_jwts_are_recognised_by_shape(text, ok):
    assert looks_like_jwt(text) is ok


@pytest.mark.parametrize("role", list(Role))
def test_only_tenant_roles_come_from_the_identity_provider(role):
    claims = {"sub": "alice", "tenant": "clinic-a", "roles": [role.value]}
    if role in IDP_ROLES:
        assert mapping().principal(claims).role is role
        return
    with pytest.raises(ClaimRejected):  # a role beyond one tenant is never taken from a clinic's IdP
        mapping().principal(claims)
    with pytest.raises(ConfigError, match="may not grant"):
        load_config(environ={**OIDC, "IMAGEVAULT_OIDC_ROLE_MAP": f"X={role.value}"})
