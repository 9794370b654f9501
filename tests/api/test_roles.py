"""The role table of docs/api.md, every role against every endpoint: allowed, or 403; 404 across tenants."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.conftest import jpeg, sample_metadata, upload_body
from vault.auth import PERMISSIONS, Action, Role

ROLES = ("clinician", "dpo", "researcher", "operator", "auditor", "admin")
C, D, R, O, A, X = ROLES
NOBODY = {"patient_id": "NO-SUCH-PATIENT-7Q", "reason": "role matrix"}

# name, method, path ("{id}": a readable record; "{fresh}": a new deletable one), JSON body,
# roles that may, status when allowed.
ENDPOINTS = [
    ("upload", "POST", "/v1/images", "multipart", {C, D}, {201}),
    ("download", "GET", "/v1/images/{id}", None, {C, D, R}, {200}),
    ("head", "HEAD", "/v1/images/{id}", None, {C, D, R}, {200}),
    ("metadata", "GET", "/v1/images/{id}/metadata", None, {C, D, R}, {200}),
    # No rendition workers run in tests: a permitted caller finds the job still queued.
    ("thumbnail", "GET", "/v1/images/{id}/thumbnail", None, {C, D, R}, {409}),
    ("preview", "GET", "/v1/images/{id}/preview", None, {C, D, R}, {409}),
    ("patch", "PATCH", "/v1/images/{id}/metadata", {"tags": ["matrix"]}, {C, D}, {200}),
    ("delete", "DELETE", "/v1/images/{fresh}", None, {C, D}, {200}),
    ("search", "POST", "/v1/search", {}, {C, D, R}, {200}),
    ("erase", "POST", "/v1/patients/erase", NOBODY, {D}, {200}),
    ("hold", "POST", "/v1/patients/legal-hold", {**NOBODY, "hold": True}, {D}, {200}),
    ("export", "POST", "/v1/patients/export", {"patient_id": NOBODY["patient_id"]}, {D}, {200}),
    ("access-report", "POST", "/v1/patients/access-report", {"patient_id": NOBODY["patient_id"]}, {D}, {200}),
    ("stats", "GET", "/v1/admin/stats", None, {O, X}, {200}),
    ("keys", "GET", "/v1/admin/keys", None, {X}, {200}),
    ("sweep", "POST", "/v1/admin/retention/sweep?dry_run=true", None, {O, X}, {200}),
    ("audit", "GET", "/v1/audit?after=0&limit=10", None, {A, X}, {200}),
    ("audit-verify", "GET", "/v1/audit/verify", None, {A, X}, {200}),
    ("rotate", "POST", "/v1/admin/keys/rotate", None, {X}, {202}),
    ("retire", "POST", "/v1/admin/keys/retire", None, {X}, {200, 409}),  # 409 while rewrapping
]

# Expired, so that a clinician may delete it; such a date is the dpo's to set at upload, so the
# tests store it as the dpo. The upload endpoint itself is tried with a record anyone may store.
RECORD = sample_metadata(consent={"research": True}, retention={"class": "until", "until": "2020-01-01"})
UPLOADED = sample_metadata(consent={"research": True})


# The readable record is a real image: researchers only ever get a de-identified copy, which
# needs an image that parses (b"img" labelled JPEG would be 403 not_deidentifiable).
def tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1, 1), "red").save(out, "PNG")
    return out.getvalue()


async def call(api, method, path, body, headers):
    if body == "multipart":
        return await api.client.post(path, data=upload_body(jpeg(b"img"), UPLOADED), headers=headers)
    kwargs = {"json": body} if body is not None else {}
    return await api.client.request(method, path, headers=headers, **kwargs)


def test_permission_table_is_the_role_table_of_api_md():
    may = {role: {a for a, roles in PERMISSIONS.items() if Role(role) in roles} for role in ROLES}
    record = {Action.UPLOAD, Action.READ, Action.SEARCH, Action.UPDATE, Action.DELETE}
    assert may[C] == record
    assert may[D] == record | {Action.RECTIFY_PATIENT, Action.OVERRIDE_RETENTION, Action.ERASE_PATIENT,
                               Action.LEGAL_HOLD, Action.EXPORT, Action.ACCESS_REPORT}
    assert may[R] == {Action.READ, Action.SEARCH}
    assert may[D] >= {Action.ACCESS_REPORT}
    assert may[O] == {Action.OPERATE}
    assert may[A] == {Action.AUDIT}
    assert may[X] == {Action.OPERATE, Action.ADMIN, Action.AUDIT}


@pytest.mark.parametrize("role", ROLES)
async def test_every_endpoint_is_allowed_or_403_for_each_role(api, role):
    owner = await api.headers("clinician")
    readable = (await api.upload(tiny_png(), RECORD, content_type="image/png", role="dpo"))["id"]
    headers = await api.headers(role)
    for name, method, template, body, allowed, ok in ENDPOINTS:
        path = template.replace("{id}", readable)
        if "{fresh}" in path:
            fresh = (await api.upload(jpeg(b"img"), RECORD, role="dpo"))["id"]
            path = path.replace("{fresh}", fresh)
        response = await call(api, method, path, body, headers)
        text = await response.read()
        if role in allowed:
            assert response.status in ok, (role, name, response.status, text)
        else:
            assert response.status == 403, (role, name, response.status, text)
            if method != "HEAD":
                assert (await response.json())["error"]["code"] == "forbidden"
    # Nothing a refused role tried changed the record.
    metadata = await (await api.client.get(f"/v1/images/{readable}/metadata", headers=owner)).json()
    assert ("matrix" in metadata["tags"]) == (role in (C, D))
    assert metadata["legal_hold"] is False


@pytest.mark.parametrize("role", ROLES)
async def test_another_tenants_record_is_404_for_roles_that_may_and_403_for_others(api, role):
    record = (await api.upload(jpeg(b"img"), RECORD, role="dpo"))["id"]
    headers = await api.headers(role, tenant="clinic-b")
    for name, method, template, body, allowed, _ in ENDPOINTS:
        if "{id}" not in template and "{fresh}" not in template:
            continue
        path = template.replace("{id}", record).replace("{fresh}", record)
        response = await call(api, method, path, body, headers)
        expected = 404 if role in allowed else 403
        assert response.status == expected, (role, name, response.status)
    response = await api.client.get(f"/v1/images/{record}/metadata", headers=await api.headers())
    assert response.status == 200


async def test_patient_operations_never_reach_into_another_tenant(api, service):
    record = (await api.upload(jpeg(b"img"), RECORD, role="dpo"))["id"]
    patient = RECORD["patient_id"]
    dpo_b = await api.headers("dpo", tenant="clinic-b")
    hold = await api.client.post("/v1/patients/legal-hold", json={"patient_id": patient, "hold": True, "reason": "x"}, headers=dpo_b)
    assert (await hold.json()) == {"updated": 0}
    erase = await api.client.post("/v1/patients/erase", json={"patient_id": patient, "reason": "x", "override_retention": True}, headers=dpo_b)
    assert (await erase.json())["shredded"] == 0
    export = await api.client.post("/v1/patients/export", json={"patient_id": patient}, headers=dpo_b)
    assert record.encode() not in await export.read()
    response = await api.client.get(f"/v1/images/{record}/metadata", headers=await api.headers())
    assert response.status == 200 and (await response.json())["legal_hold"] is False


async def test_every_v1_endpoint_wants_a_token(api):
    record = (await api.upload(jpeg(b"img"), RECORD, role="dpo"))["id"]
    for name, method, template, body, _, _ in ENDPOINTS:
        path = template.replace("{id}", record).replace("{fresh}", record)
        response = await call(api, method, path, body, {})
        assert response.status == 401, name


async def test_a_method_a_route_does_not_have_is_405_with_an_allow_header(api):
    for path in ("/v1/patients/erase", "/v1/audit", "/v1/admin/retention/sweep"):
        response = await api.client.request("PUT", path, headers=await api.headers("dpo"))
        assert response.status == 405
        assert response.headers["Allow"] and (await response.json())["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("role", ROLES)
async def test_every_refusal_is_audited_once_in_the_callers_tenant(api, service, role):
    readable = (await api.upload(tiny_png(), RECORD, content_type="image/png", role="dpo"))["id"]
    headers = await api.headers(role)
    tenant = "-" if role == X else "clinic-a"
    for name, method, template, body, allowed, _ in ENDPOINTS:
        if role in allowed:
            continue
        path = template.replace("{id}", readable).replace("{fresh}", readable)
        before = service.audit.head()[0]
        response = await call(api, method, path, body, headers)
        assert response.status == 403, name
        added = service.audit.page(before, 10).entries
        assert [(e.event.outcome, e.event.scope, e.event.actor.role) for e in added] == [("forbidden", tenant, role)], name
