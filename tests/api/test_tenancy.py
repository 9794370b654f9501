"""Two tenants, every role, every route: clinic-a's callers never see, read, change, count or learn
the existence of anything of clinic-b's (records, audit entries, token names, statistics).

The route list comes from the router itself: a route added without a case here fails
``test_every_route_has_a_tenancy_case``. Another tenant's record must be indistinguishable from
one that does not exist (same status, same error body), never a 403 where a missing one is 404.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile

import aiohttp
import pytest

from tests.api.test_roles import tiny_png
from tests.conftest import jpeg, sample_metadata, upload_body
from vault.api.app import create_app
from vault.ids import encode_id, new_record_id

A, B = "clinic-a", "clinic-b"
ROLES = ("clinician", "dpo", "researcher", "operator", "auditor", "admin")
B_PATIENT = "CLINIC-B-PATIENT-77Q"
A_PATIENT = "CLINIC-A-PATIENT-31K"
# Expired retention: a sweep that reached into clinic-b would shred it.
B_RECORD = sample_metadata(patient_id=B_PATIENT, consent={"research": True}, lesion_id="L-BBB",
                           retention={"class": "until", "until": "2020-01-01"})
A_RECORD = sample_metadata(patient_id=A_PATIENT, consent={"research": True}, lesion_id="L-AAA")

# What each route is, for the leak checks below. "record": an {id} route (another tenant's id
# must look like a missing one); "global": the deployment's own operations (admin only, checked
# as refused for everyone else); "public": no token, no tenant.
CASES = {
    ("POST", "/v1/images"): "upload",
    ("GET", "/v1/images/{id}"): "record",
    ("HEAD", "/v1/images/{id}"): "record",
    ("DELETE", "/v1/images/{id}"): "record",
    ("GET", "/v1/images/{id}/metadata"): "record",
    ("GET", "/v1/images/{id}/thumbnail"): "record",
    ("GET", "/v1/images/{id}/preview"): "record",
    ("PATCH", "/v1/images/{id}/metadata"): "record",
    ("OPTIONS", "/v1/uploads"): "tus_options",
    ("POST", "/v1/uploads"): "tus_create",
    ("HEAD", "/v1/uploads/{id}"): "tus",
    ("PATCH", "/v1/uploads/{id}"): "tus",
    ("DELETE", "/v1/uploads/{id}"): "tus",
    ("POST", "/v1/search"): "search",
    ("GET", "/v1/admin/stats"): "stats",
    ("GET", "/v1/admin/keys"): "global",
    ("POST", "/v1/admin/keys/rotate"): "global",
    ("POST", "/v1/admin/keys/retire"): "global",
    ("POST", "/v1/admin/keys/epoch"): "global",
    ("POST", "/v1/patients/erase"): "patient",
    ("POST", "/v1/patients/legal-hold"): "patient",
    ("POST", "/v1/patients/export"): "patient",
    ("POST", "/v1/patients/access-report"): "patient",
    ("POST", "/v1/admin/retention/sweep"): "sweep",
    ("GET", "/v1/audit"): "audit",
    ("GET", "/v1/audit/verify"): "verify",
    ("GET", "/v1/info"): "public",
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/metrics"): "public",
    ("GET", "/openapi.json"): "public",
    # The web console: its pages and the provider sign-in (not configured here: 404) are public;
    # a session is the token's tenant and nothing more.
    ("GET", "/"): "public",
    ("GET", "/console"): "public",
    ("GET", "/console/"): "public",
    ("GET", "/console/{name}"): "public",
    ("GET", "/v1/session/oidc"): "public",
    ("GET", "/v1/session/oidc/callback"): "public",
    ("POST", "/v1/session"): "session",
    ("GET", "/v1/session"): "session",
    ("DELETE", "/v1/session"): "session",
}
PATIENT_BODIES = {
    "/v1/patients/erase": {"reason": "tenancy", "override_retention": True},
    "/v1/patients/legal-hold": {"hold": True, "reason": "tenancy"},
    "/v1/patients/export": {},
    "/v1/patients/access-report": {},
}
RECORD_BODIES = {"PATCH": {"tags": ["changed-by-a"]}}


def routes(config) -> set[tuple[str, str]]:
    app = create_app(config, vault=object())  # type: ignore[arg-type]  # routes only, never started
    # HEAD beside GET (allow_head) is the same handler: one case covers both, except where a
    # case names HEAD itself.
    found = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    return {(m, p) for m, p in found if m != "HEAD" or (m, p) in CASES}


def test_every_route_has_a_tenancy_case(config):
    assert routes(config) == set(CASES)


class Secrets:
    """What clinic-a must never learn: clinic-b's name (its token names start with it), its
    record ids and its patient's id."""

    def __init__(self, record_ids: list[str]) -> None:
        self.needles = [B.encode(), B_PATIENT.encode(), *(r.encode() for r in record_ids)]

    def found_in(self, raw: bytes) -> list[bytes]:
        return [n for n in self.needles if n in raw]


async def clinic_b(api) -> list[str]:
    """clinic-b's records and some history of its own (reads, stats, an audit listing)."""
    expired = (await api.upload(tiny_png(), B_RECORD, content_type="image/png", role="dpo", tenant=B))["id"]
    live = (await api.upload(tiny_png(), {**B_RECORD, "retention": {"class": "medical"}}, content_type="image/png",
                             tenant=B))["id"]
    b_clinician = await api.headers("clinician", B)
    assert (await api.client.get(f"/v1/images/{live}/metadata", headers=b_clinician)).status == 200
    assert (await api.client.get("/v1/admin/stats", headers=await api.headers("operator", B))).status == 200
    assert (await api.client.get("/v1/audit", headers=await api.headers("auditor", B))).status == 200
    # And the deployment's: global entries (an admin's view of every tenant's numbers).
    assert (await api.client.get("/v1/admin/stats", headers=await api.headers("admin"))).status == 200
    return [expired, live]


async def check_session(api, role: str, headers: dict[str, str], secrets: Secrets) -> None:
    """A console session made with clinic-a's token is clinic-a's: what it signs in as, what
    it finds, and nothing of clinic-b on the way."""
    token = headers["Authorization"].split(" ", 1)[1]
    jar = aiohttp.CookieJar(unsafe=True)  # the test server is an IP address
    async with aiohttp.ClientSession(base_url=str(api.client.make_url("/")), cookie_jar=jar) as browser:
        async with browser.post("/v1/session", json={"token": token}) as response:
            raw = await response.read()
            assert response.status == 201 and secrets.found_in(raw) == []
            session = json.loads(raw)
        assert session["tenant"] == (A if role != "admin" else "-") and session["role"] == role
        async with browser.post("/v1/search", json={}, headers={"X-CSRF-Token": session["csrf_token"]}) as response:
            assert response.status == (200 if role in ("clinician", "dpo", "researcher") else 403)
            assert secrets.found_in(await response.read()) == []
        async with browser.delete("/v1/session", headers={"X-CSRF-Token": session["csrf_token"]}) as response:
            assert response.status == 204


def without_request_id(raw: bytes) -> object:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body["error"].pop("request_id", None)
    return body


async def request(api, method, path, headers, body=None):
    kwargs = {"json": body} if body is not None else {}
    response = await api.client.request(method, path, headers=headers, **kwargs)
    return response.status, await response.read()


async def check_record_route(api, method, template, headers, b_ids, secrets):
    missing = encode_id(new_record_id())
    body = RECORD_BODIES.get(method)
    for b_id in b_ids:
        status, raw = await request(api, method, template.replace("{id}", b_id), headers, body)
        gone_status, gone_raw = await request(api, method, template.replace("{id}", missing), headers, body)
        assert status == gone_status and status in (403, 404), (method, template, status, gone_status)
        assert without_request_id(raw) == without_request_id(gone_raw), (method, template)
        assert secrets.found_in(raw) == [], (method, template)


async def check_patient_route(api, path, role, headers, secrets):
    extra = PATIENT_BODIES[path]
    status, raw = await request(api, "POST", path, headers, {"patient_id": B_PATIENT, **extra})
    nobody_status, nobody_raw = await request(api, "POST", path, headers, {"patient_id": "NOBODY-AT-ALL-1", **extra})
    assert status == nobody_status == (200 if role == "dpo" else 403), (path, role, status)
    assert secrets.found_in(raw) == [], path
    if role != "dpo":
        return
    if path == "/v1/patients/export":
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            assert archive.namelist() == ["manifest.json"]
            assert json.loads(archive.read("manifest.json"))["files"] == []
    elif path == "/v1/patients/access-report":
        report = json.loads(raw)
        assert report["records"] == [] and report["accesses"] == []
    elif path == "/v1/patients/erase":
        assert json.loads(raw)["shredded"] == 0 and json.loads(raw)["refused"] == []
    else:
        assert json.loads(raw) == json.loads(nobody_raw) == {"updated": 0}


async def check_audit(api, headers, role, secrets, a_probe_ids):
    entries, after = [], 0
    while after is not None:
        status, raw = await request(api, "GET", f"/v1/audit?after={after}&limit=1000", headers)
        assert status == (200 if role in ("auditor", "admin") else 403), role
        if status != 200:
            assert secrets.found_in(raw) == []
            return
        page = json.loads(raw)
        entries += page["entries"]
        after = page["next_after"]
    if role == "admin":  # the admin sees every tenant's entries, by design
        assert {e["tenant"] for e in entries} >= {A, B, "-"}
        return
    assert {e["tenant"] for e in entries} == {A}
    for entry in entries:
        assert entry["actor"]["tenant"] in (A, "-")
        text = json.dumps(entry).encode()
        leaked = [n for n in secrets.found_in(text) if n.decode() not in a_probe_ids]
        assert leaked == [], entry
        # clinic-b's ids appear only where clinic-a itself asked for them, and got nothing.
        if set(entry["record_ids"]) & a_probe_ids:
            assert entry["outcome"] in ("not_found", "forbidden"), entry
    # Filtering by clinic-b's record id finds only clinic-a's own fruitless probes.
    for b_id in a_probe_ids:
        status, raw = await request(api, "GET", f"/v1/audit?record_id={b_id}", headers)
        assert status == 200
        assert all(e["tenant"] == A and e["outcome"] in ("not_found", "forbidden") for e in json.loads(raw)["entries"])


TUS = {"Tus-Resumable": "1.0.0"}


def tus_creation(metadata: dict) -> dict[str, str]:
    encoded = base64.b64encode(json.dumps(metadata).encode()).decode()
    return {**TUS, "Upload-Length": "100", "Upload-Metadata": f"metadata {encoded},content_type {base64.b64encode(b'image/png').decode()}"}


async def check_upload_route(api, method, template, headers, b_upload, secrets):
    """Another tenant's resumable upload looks exactly like one that does not exist."""
    missing = encode_id(new_record_id())
    tus_headers = {**headers, **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    status, raw = await request(api, method, template.replace("{id}", b_upload), tus_headers)
    gone_status, gone_raw = await request(api, method, template.replace("{id}", missing), tus_headers)
    assert status == gone_status and status in (403, 404), (method, template, status, gone_status)
    assert without_request_id(raw) == without_request_id(gone_raw), (method, template)
    assert secrets.found_in(raw) == [], (method, template)


@pytest.mark.parametrize("role", ROLES)
async def test_tenant_a_learns_nothing_of_tenant_b(api, role, config):
    b_ids = await clinic_b(api)
    created = await api.client.post("/v1/uploads", headers={**await api.headers("clinician", B),
                                                            **tus_creation(B_RECORD | {"retention": {"class": "medical"}})})
    assert created.status == 201, await created.text()
    b_upload = created.headers["Location"].rsplit("/", 1)[1]
    b_ids = [*b_ids, b_upload]
    secrets = Secrets(b_ids)
    a_id = (await api.upload(tiny_png(), A_RECORD, content_type="image/png", role="dpo"))["id"]
    headers = await api.headers(role, A)
    b_owner = await api.headers("clinician", B)
    b_before = [await (await api.client.get(f"/v1/images/{i}/metadata", headers=b_owner)).json() for i in b_ids[:2]]
    for (method, template), kind in sorted(CASES.items(), key=lambda c: c[1] == "audit"):  # audit last
        if kind == "record":
            await check_record_route(api, method, template, headers, b_ids, secrets)
        elif kind == "patient":
            await check_patient_route(api, template, role, headers, secrets)
        elif kind == "tus":
            await check_upload_route(api, method, template, headers, b_upload, secrets)
        elif kind == "tus_create":
            response = await api.client.post(template, headers={**headers, **tus_creation(sample_metadata())})
            assert response.status == (201 if role in ("clinician", "dpo") else 403)
            assert secrets.found_in(await response.read()) == []
        elif kind == "tus_options":
            response = await api.client.options(template, headers=headers)
            assert response.status == 204 and secrets.found_in(await response.read()) == []
        elif kind == "upload":
            body = upload_body(jpeg(b"img"), sample_metadata(consent={"research": True}))
            response = await api.client.post(template, data=body, headers=headers)
            raw = await response.read()
            assert response.status == (201 if role in ("clinician", "dpo") else 403)
            assert secrets.found_in(raw) == []
        elif kind == "search":
            for query in ({}, {"lesion_id": "L-BBB"}, {"modality": "dermoscopic", "limit": 100}):
                status, raw = await request(api, "POST", template, headers, query)
                assert status == (200 if role in ("clinician", "dpo", "researcher") else 403)
                assert secrets.found_in(raw) == [], query
                if status == 200 and role != "researcher":
                    assert a_id.encode() in raw or query.get("lesion_id") == "L-BBB"
        elif kind == "stats":
            status, raw = await request(api, method, template, headers)
            assert status == (200 if role in ("operator", "admin") else 403)
            if role == "operator":
                stats = json.loads(raw)
                assert set(stats["tenants"]) == {A} and stats["records"] == stats["tenants"][A]["records"]
                assert secrets.found_in(raw) == []
            elif role == "admin":
                assert set(json.loads(raw)["tenants"]) >= {A, B}
            else:
                assert secrets.found_in(raw) == []
        elif kind == "sweep":
            if role == "admin":  # the admin's sweep is every tenant's, by design: not run here
                continue
            status, raw = await request(api, method, template, headers)  # a real sweep, not a dry run
            if role == "operator":  # clinic-b's expired record is neither counted nor shredded
                assert status == 200 and json.loads(raw) == {"due": 0, "shredded": 0, "held": 0}
            else:
                assert status == 403 and secrets.found_in(raw) == []
        elif kind == "global":
            if role != "admin":
                status, raw = await request(api, method, template, headers)
                assert status == 403 and secrets.found_in(raw) == []
        elif kind == "verify":
            status, raw = await request(api, method, template, headers)
            assert status == (200 if role in ("auditor", "admin") else 403)
            if status == 200:
                assert set(json.loads(raw)) == {"ok", "entries", "head"}
            assert secrets.found_in(raw) == []
        elif kind == "audit":
            await check_audit(api, headers, role, secrets, set(b_ids))
        elif kind == "session":
            if method == "POST":  # one walk through sign-in, use and sign-out covers the three
                await check_session(api, role, headers, secrets)
        else:
            assert kind == "public"
            status, raw = await request(api, method, template, {})
            assert secrets.found_in(raw) == [], template
    # clinic-b's records are exactly as they were: nothing clinic-a did reached them.
    b_after = [await (await api.client.get(f"/v1/images/{i}/metadata", headers=b_owner)).json() for i in b_ids[:2]]
    assert b_after == b_before
    b_state = await api.client.head(f"/v1/uploads/{b_upload}", headers={**b_owner, **TUS})
    assert b_state.status == 200 and b_state.headers["Upload-Offset"] == "0"
