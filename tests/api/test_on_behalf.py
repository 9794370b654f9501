"""``X-On-Behalf-Of``: an application token created with the right names the user it acts for,
and the audit trail records both; any other token is refused and the refusal audited."""

from __future__ import annotations

import json

import pytest

from tests.conftest import png, sample_metadata, upload_body
from tests.infra.daemon import cli
from vault.audit.chain import AuditEntry
from vault.auth import Role
from vault.cli.common import COMMAND_LINE

HEADER = "X-On-Behalf-Of"


def entries(service) -> list[AuditEntry]:
    return service.audit.page(0, 1000).entries


async def app_token(service, *, on_behalf: bool, role: Role = Role.CLINICIAN, name: str = "photo-app") -> str:
    token, info = await service.create_token(COMMAND_LINE, "clinic-a", role, name, "1d", on_behalf=on_behalf)
    assert info.on_behalf is on_behalf
    return token


async def upload(api, token: str, **headers: str):
    body = upload_body(png(b"pixels"), sample_metadata(), content_type="image/png")
    return await api.client.post("/v1/images", data=body, headers={"Authorization": f"Bearer {token}", **headers})


async def test_a_token_with_the_right_acts_for_the_user_and_the_audit_records_both(api):
    token = await app_token(api.service, on_behalf=True)
    response = await upload(api, token, **{HEADER: "dr.jones@clinic-a.example"})
    assert response.status == 201, await response.json()
    record = await response.json()
    response = await api.client.get(f"/v1/images/{record['id']}", headers={
        "Authorization": f"Bearer {token}", HEADER: "nurse.smith"})
    assert response.status == 200
    await response.read()
    actors = {e.event.action: e.event.actor for e in entries(api.service) if e.event.action in ("create", "read")}
    assert (actors["create"].name, actors["create"].on_behalf_of) == ("photo-app", "dr.jones@clinic-a.example")
    assert (actors["read"].name, actors["read"].on_behalf_of, actors["read"].via) == ("photo-app", "nurse.smith", "token")
    # the listing an auditor reads shows the pair, and the chain with these entries verifies
    auditor = await api.headers("auditor")
    page = await (await api.client.get("/v1/audit", headers=auditor)).json()
    (read,) = [e for e in page["entries"] if e["action"] == "read"]
    assert read["actor"] == {"name": "photo-app", "role": "clinician", "tenant": "clinic-a", "via": "token",
                             "on_behalf_of": "nurse.smith"}
    assert (await (await api.client.get("/v1/audit/verify", headers=auditor)).json())["ok"] is True


async def test_the_same_token_without_the_header_acts_as_itself(api):
    token = await app_token(api.service, on_behalf=True)
    assert (await upload(api, token)).status == 201
    (create,) = [e for e in entries(api.service) if e.event.action == "create"]
    assert create.event.actor.on_behalf_of is None


async def test_a_token_without_the_right_is_refused_and_the_refusal_audited(api):
    token = await app_token(api.service, on_behalf=False)
    response = await upload(api, token, **{HEADER: "dr.jones"})
    body = await response.json()
    assert response.status == 403 and body["error"]["code"] == "forbidden", body
    refusals = [e for e in entries(api.service) if e.event.action == "on_behalf"]
    assert len(refusals) == 1
    (refusal,) = refusals
    assert refusal.event.outcome == "forbidden" and refusal.event.scope == "clinic-a"
    assert (refusal.event.actor.name, refusal.event.actor.on_behalf_of) == ("photo-app", "dr.jones")
    assert refusal.event.details == {"route": "/v1/images"}
    assert not [e for e in entries(api.service) if e.event.action == "create"]  # nothing was stored


@pytest.mark.parametrize("value", ["dr jones", "-jones", "x" * 129, "jones\u00e9", "a/b", "jones;drop", "%2e"])
async def test_an_invalid_user_name_is_400_before_anything_else(api, value):
    for on_behalf in (True, False):
        token = await app_token(api.service, on_behalf=on_behalf, name=f"app-{on_behalf}")
        response = await api.client.post("/v1/search", json={}, headers={
            "Authorization": f"Bearer {token}", HEADER: value.encode("utf-8").decode("latin-1")})
        body = await response.json()
        assert response.status == 400 and body["error"]["code"] == "invalid_request", (value, body)
        assert value not in body["error"]["message"]
    assert not [e for e in entries(api.service) if e.event.action in ("on_behalf", "search")]


async def test_the_header_twice_is_400(api):
    token = await app_token(api.service, on_behalf=True)
    response = await api.client.post("/v1/search", json={}, headers=[
        ("Authorization", f"Bearer {token}"), (HEADER, "dr.jones"), (HEADER, "dr.smith")])
    assert response.status == 400


async def test_a_bad_token_with_the_header_is_still_401(api):
    response = await api.client.post("/v1/search", json={}, headers={"Authorization": "Bearer ivt_" + "x" * 43,
                                                                      HEADER: "dr.jones"})
    assert response.status == 401
    assert not [e for e in entries(api.service) if e.event.action == "on_behalf"]


async def test_token_documents_written_before_the_right_existed_have_none(api):
    from vault.index import schema

    token = await app_token(api.service, on_behalf=True)
    key = schema.token_key(token)

    def strip(txn):
        doc = txn.get_doc(schema.DB_TOKENS, key)
        del doc["on_behalf"]
        txn.put_doc(schema.DB_TOKENS, key, txn.seal.seal_token(key, doc))  # as sealed by the upgrade

    await api.service.index.write(strip)
    assert (await upload(api, token, **{HEADER: "dr.jones"})).status == 403


def test_cli_token_create_on_behalf_is_shown_by_token_list(tmp_path):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "photo-app", "--on-behalf")
    cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "scanner")
    listed = {t["name"]: t["on_behalf"] for t in json.loads(cli(data_dir, "token", "list", "--json").stdout)}
    assert listed == {"photo-app": True, "scanner": False}
    table = cli(data_dir, "token", "list").stdout.splitlines()
    assert "ON-BEHALF" in table[0]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    column = table[0].split().index("ON-BEHALF")
    assert (rows["photo-app"][column], rows["scanner"][column]) == ("yes", "no")


async def test_the_right_is_recorded_in_the_token_creation_entry(service):
    await app_token(service, on_behalf=True)
    await app_token(service, on_behalf=False, name="scanner")
    created = [e.event.details for e in entries(service) if e.event.action == "token_create"]
    assert [(d["token_name"], d["on_behalf"]) for d in created] == [("photo-app", True), ("scanner", False)]


async def test_every_authenticated_operation_documents_the_header_and_its_answers(api):
    document = await (await api.client.get("/openapi.json")).json()
    operations = [op for item in document["paths"].values() for method, op in item.items() if method != "parameters"]
    authenticated = [op for op in operations if op.get("security") != []]
    assert authenticated
    for op in authenticated:
        (param,) = [p for p in op["parameters"] if p["name"] == HEADER]
        assert param["in"] == "header" and not param["required"], op["operationId"]
        assert {"400", "403"} <= set(op["responses"]), op["operationId"]
    for op in operations:
        if op.get("security") == []:
            assert HEADER not in [p["name"] for p in op.get("parameters", [])]
