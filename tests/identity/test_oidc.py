"""JWT access tokens from a real test issuer (keys generated here, discovery and JWKS served by an
aiohttp server on loopback) against the real service and HTTP app: accepted, refused, key
rotation, a provider that is down or hangs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.conftest import (
    MovableClock,
    make_config,
    open_vault,
    png,
    sample_metadata,
    upload_body,
)
from tests.identity.issuer import AUDIENCE, Issuer
from vault.api.app import create_app
from vault.audit.chain import AuditEntry
from vault.cli.common import COMMAND_LINE
from vault.errors import Unauthorized
from vault.service import Vault

ALGORITHMS = ("RS256", "ES256", "EdDSA")


@pytest.fixture
async def issuer(aiohttp_server: Any) -> AsyncIterator[Issuer]:
    issuer = Issuer()
    for alg in ALGORITHMS:
        issuer.add_key(alg)
    await issuer.start(aiohttp_server)
    yield issuer
    issuer.release()


@pytest.fixture
async def make_api(aiohttp_client: Any, tmp_path: Any, issuer: Issuer) -> AsyncIterator[Callable[..., Any]]:
    """``await make_api(**config overrides)`` -> (client, vault) with OIDC pointed at ``issuer``."""
    opened: list[Vault] = []

    async def make(**overrides: Any) -> tuple[Any, Vault]:
        settings = {"oidc_issuer": issuer.url, "oidc_audience": AUDIENCE, "oidc_jwks_min_refresh": 0,
                    "oidc_fetch_timeout": 1.0, **overrides}
        config = make_config(tmp_path / f"data{len(opened)}", **settings)
        vault = await open_vault(config, MovableClock())
        opened.append(vault)
        return await aiohttp_client(create_app(config, vault=vault)), vault

    yield make
    for vault in opened:
        await vault.close()


@pytest.fixture
async def oidc(make_api: Any) -> tuple[Any, Vault]:
    return await make_api()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def entries(vault: Vault) -> list[AuditEntry]:
    return vault.audit.page(0, 1000).entries


async def upload(client: Any, token: str) -> Any:
    body = upload_body(png(b"pixels"), sample_metadata(), content_type="image/png")
    return await client.post("/v1/images", data=body, headers=bearer(token))


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_a_valid_jwt_authenticates_and_the_audit_entry_names_its_subject(oidc, issuer, alg):
    client, vault = oidc
    kid = next(k for k in issuer.published if issuer.keys[k][0] == alg)
    token = issuer.token(kid, sub="f3a1c2d4-7b8e-4c1a-9d2e-0a1b2c3d4e5f", tenant="clinic-b", roles="dpo")
    response = await upload(client, token)
    assert response.status == 201, await response.json()
    record = await response.json()
    response = await client.get(f"/v1/images/{record['id']}/metadata", headers=bearer(token))
    assert response.status == 200
    actors = [(e.event.action, e.event.actor) for e in entries(vault)]
    for action in ("create", "read"):
        (actor,) = [a for act, a in actors if act == action]
        assert (actor.name, actor.role, actor.tenant, actor.via, actor.on_behalf_of) == (
            "f3a1c2d4-7b8e-4c1a-9d2e-0a1b2c3d4e5f", "dpo", "clinic-b", "oidc", None)
    assert vault.audit.verify().ok


async def test_the_audit_listing_shows_how_the_caller_authenticated(oidc, issuer):
    client, vault = oidc
    assert (await upload(client, issuer.token())).status == 201
    auditor, _ = await vault.create_token(COMMAND_LINE, "clinic-a", vault_role("auditor"), "aud", "1d")
    page = await (await client.get("/v1/audit", headers=bearer(auditor))).json()
    (create,) = [e for e in page["entries"] if e["action"] == "create"]
    assert create["actor"] == {"name": "dr.jones", "role": "clinician", "tenant": "clinic-a", "via": "oidc",
                               "on_behalf_of": None}


def vault_role(name: str) -> Any:
    from vault.auth import Role

    return Role(name)


# Each case and the reason the daemon logs for it: proof that it fails the check it is about.
REASONS = {
    "expired": "expired", "not yet valid (nbf)": "not_yet_valid", "issued in the future": "not_yet_valid",
    "wrong audience": "audience", "wrong issuer": "issuer", "no exp": "missing_claim", "alg none": "algorithm",
    "alg none, with a signature": "algorithm", "HS256 with the public key": "algorithm",
    "unknown kid": "unknown_kid", "no kid": "no_kid", "tampered payload": "signature",
    "signature of another key": "signature", "garbage": "malformed", "header not JSON": "malformed",
    "tenant not a slug": "tenant", "no tenant": "tenant", "no role": "role", "two roles": "roles_ambiguous",
    "name not a user name": "name",
}


def refused_tokens(issuer: Issuer) -> dict[str, str]:
    rsa_kid = issuer.published[0]
    now = int(time.time())
    good = issuer.token(rsa_kid)
    head, body, sig = good.split(".")
    import base64
    import json

    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["roles"] = ["dpo"]
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    unpublished = issuer.add_key("RS256", publish=False)
    return {
        "expired": issuer.token(rsa_kid, iat=now - 3600, exp=now - 600),
        "not yet valid (nbf)": issuer.token(rsa_kid, nbf=now + 600),
        "issued in the future": issuer.token(rsa_kid, iat=now + 600, exp=now + 1200),
        "wrong audience": issuer.token(rsa_kid, aud="another-service"),
        "wrong issuer": issuer.token(rsa_kid, iss=issuer.url + "-evil"),
        "no exp": issuer.token(rsa_kid, exp=None),
        "alg none": Issuer.unsigned({"alg": "none", "kid": rsa_kid}, issuer.claims()),
        "alg none, with a signature": Issuer.unsigned({"alg": "none", "kid": rsa_kid}, issuer.claims(), b"x" * 32),
        "HS256 with the public key": issuer.hs256_with_public_key(rsa_kid),
        "unknown kid": issuer.token(unpublished),
        "no kid": Issuer.unsigned({"alg": "RS256"}, issuer.claims(), b"s" * 256),
        "tampered payload": f"{head}.{forged_body}.{sig}",
        "signature of another key": f"{head}.{body}.{issuer.token(issuer.published[2]).split('.')[2]}",
        "garbage": "abc.def.ghi",
        "header not JSON": "bm90LWpzb24.e30.c2ln",
        "tenant not a slug": issuer.token(rsa_kid, tenant="Clinic A"),
        "no tenant": issuer.token(rsa_kid, tenant=None),
        "no role": issuer.token(rsa_kid, roles=["offline_access"]),
        "two roles": issuer.token(rsa_kid, roles=["clinician", "dpo"]),
        "name not a user name": issuer.token(rsa_kid, sub="dr jones"),
    }


async def test_refused_jwts_get_the_same_401_as_a_bad_token(oidc, issuer, caplog):
    client, vault = oidc
    before = len(entries(vault))
    tokens = refused_tokens(issuer)
    assert set(tokens) == set(REASONS)
    for case, token in tokens.items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vault.identity.oidc"):
            response = await client.post("/v1/search", json={"modality": "clinical"}, headers=bearer(token))
        assert [r.getMessage() for r in caplog.records] == [f"JWT refused: {REASONS[case]}"], case
        assert token not in caplog.text
        body = await response.json()
        assert response.status == 401, (case, body)
        assert body["error"]["code"] == "unauthorized", case
        assert body["error"]["message"] == Unauthorized.default_message, case
        assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), case
    assert len(entries(vault)) == before  # no one was authenticated, nothing to attribute


async def test_a_jwt_is_refused_while_no_issuer_is_configured(api):
    issuer = Issuer()
    issuer.add_key("ES256")
    issuer.url = "https://idp.example/realms/clinic"
    response = await api.client.post("/v1/search", json={}, headers=bearer(issuer.token()))
    assert response.status == 401 and (await response.json())["error"]["code"] == "unauthorized"


async def test_keys_are_fetched_once_and_discovered_from_the_issuer(oidc, issuer):
    client, _ = oidc
    for _ in range(3):
        assert (await upload(client, issuer.token())).status == 201
    assert (issuer.discovery_fetches, issuer.fetches) == (1, 1)


async def test_an_unknown_kid_is_looked_up_again_once_then_refused(oidc, issuer):
    client, _ = oidc
    assert (await upload(client, issuer.token())).status == 201
    stranger = issuer.add_key("ES256", publish=False)
    response = await upload(client, issuer.token(stranger))
    assert response.status == 401
    assert issuer.fetches == 2  # the refetch happened, and found nothing


async def test_key_rotation_at_the_issuer_is_picked_up(oidc, issuer):
    client, _ = oidc
    assert (await upload(client, issuer.token())).status == 201
    new_kid = issuer.add_key("ES256")
    issuer.published = [new_kid]  # the old keys are withdrawn
    assert (await upload(client, issuer.token(new_kid))).status == 201
    assert issuer.fetches == 2


async def test_refetches_for_unknown_kids_are_rate_limited(make_api, issuer):
    client, _ = await make_api(oidc_jwks_min_refresh=3600)
    assert (await upload(client, issuer.token())).status == 201
    for _ in range(5):
        stranger = issuer.add_key("EdDSA", publish=False)
        assert (await upload(client, issuer.token(stranger))).status == 401
    assert issuer.fetches == 1


async def test_an_unreachable_provider_is_503_without_keys_and_tolerated_with_them(make_api, issuer):
    client, _ = await make_api(oidc_jwks_cache_ttl=0.2)
    assert (await upload(client, issuer.token())).status == 201
    issuer.mode = "error"
    await asyncio.sleep(0.3)  # the cached set is now stale; refreshing it fails
    assert (await upload(client, issuer.token())).status == 201  # the keys held stay in use
    stranger = issuer.add_key("RS256")
    response = await upload(client, issuer.token(stranger))
    body = await response.json()
    assert response.status == 503 and body["error"]["code"] == "idp_unavailable", body
    assert "Retry-After" in response.headers
    issuer.mode = "ok"
    assert (await upload(client, issuer.token(stranger))).status == 201  # back: fetched again


async def test_a_provider_that_hangs_delays_a_request_by_at_most_the_fetch_timeout(make_api, issuer):
    issuer.mode = "hang"
    client, vault = await make_api(oidc_fetch_timeout=0.5)
    started = time.monotonic()
    response = await client.post("/v1/search", json={}, headers=bearer(issuer.token()))
    elapsed = time.monotonic() - started
    assert response.status == 503 and (await response.json())["error"]["code"] == "idp_unavailable"
    assert elapsed < 5  # bounded by the 0.5 s fetch timeout, not by the provider's 30 s
    # an opaque token is not held up by the provider at all
    token, _ = await vault.create_token(COMMAND_LINE, "clinic-a", vault_role("clinician"), "app", "1d")
    assert (await client.post("/v1/search", json={}, headers=bearer(token))).status == 200


async def test_a_discovery_document_naming_another_issuer_is_not_trusted(make_api, issuer):
    issuer.discovery_issuer = "https://evil.example/realms/clinic"
    client, _ = await make_api()
    response = await upload(client, issuer.token())
    assert response.status == 503
    assert issuer.fetches == 0  # its jwks_uri was never followed


async def test_a_configured_jwks_url_skips_discovery_and_role_and_tenant_maps_apply(make_api, issuer):
    client, vault = await make_api(
        oidc_jwks_url=f"{issuer.url}/protocol/openid-connect/certs", oidc_role_claim="realm_access.roles",
        oidc_role_map="Dermatology=clinician,Privacy=dpo", oidc_tenant_claim="org", oidc_tenant_map="org-7731=clinic-c",
        oidc_name_claim="preferred_username",
    )
    token = issuer.token(realm_access={"roles": ["Dermatology", "clinician-but-unmapped"]}, org="org-7731",
                         preferred_username="jones@clinic.example", tenant=None, roles=None)
    assert (await upload(client, token)).status == 201
    (create,) = [e for e in entries(vault) if e.event.action == "create"]
    assert (create.event.actor.name, create.event.actor.role, create.event.actor.tenant) == (
        "jones@clinic.example", "clinician", "clinic-c")
    unmapped = issuer.token(realm_access={"roles": ["Dermatology"]}, org="org-0000", tenant=None, roles=None,
                            preferred_username="jones@clinic.example")
    assert (await upload(client, unmapped)).status == 401
    assert issuer.discovery_fetches == 0


async def test_a_jwt_may_not_name_another_user(oidc, issuer):
    client, vault = oidc
    response = await client.post("/v1/search", json={}, headers={**bearer(issuer.token()), "X-On-Behalf-Of": "dr.smith"})
    assert response.status == 403
    (refusal,) = [e for e in entries(vault) if e.event.action == "on_behalf"]
    actor = refusal.event.actor
    assert (actor.name, actor.via, actor.on_behalf_of, refusal.event.outcome) == ("dr.jones", "oidc", "dr.smith", "forbidden")


async def test_while_a_refresh_hangs_other_requests_use_the_keys_held(make_api, issuer):
    client, _ = await make_api(oidc_jwks_cache_ttl=0.2, oidc_fetch_timeout=5.0)
    assert (await upload(client, issuer.token())).status == 201
    issuer.mode = "hang"
    await asyncio.sleep(0.3)  # stale: the next request refreshes, and the provider does not answer
    refreshing = asyncio.ensure_future(upload(client, issuer.token()))
    while issuer.fetches < 2:
        await asyncio.sleep(0.01)
    response = await upload(client, issuer.token())  # does not queue behind the refresh
    assert response.status == 201 and not refreshing.done()
    issuer.release()  # the hanging fetch now completes; the first request is served as well
    assert (await refreshing).status == 201
