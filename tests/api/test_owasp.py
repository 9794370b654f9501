"""OWASP API Security Top 10 (2023), as tests of behaviour.

API1 object-level authorization, API2 authentication, API3 property-level authorization,
API4 resource consumption. API5 (function-level authorization) is the role matrix in
test_roles.py; the hostile-input side is fuzzed by schemathesis (tests/fuzz.py).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import aiohttp
import pytest

from tests.conftest import jpeg, sample_metadata, upload_body
from vault.index import schema

OTHER = "clinic-b"
MISSING = "01M80000000000000000000000"


async def test_api1_every_id_taking_endpoint_treats_foreign_and_random_ids_alike(api):
    """Same status, same code, same message, no timing tell between "not yours" and "none"."""
    record = await api.upload(jpeg(b"clinic-a image"))
    stranger = await api.headers(tenant=OTHER)
    dpo = await api.headers("dpo", tenant=OTHER)
    calls = [
        ("get", "", {}, stranger), ("head", "", {}, stranger), ("get", "/metadata", {}, stranger),
        ("patch", "/metadata", {"json": {"lesion_id": "x"}}, stranger),
        ("delete", "", {}, stranger), ("delete", "?override=true&reason=r", {}, dpo),
    ]
    for method, suffix, kwargs, headers in calls:
        answers = []
        for target in (record["id"], MISSING, "01" + "Z" * 24):
            response = await getattr(api.client, method)(f"/v1/images/{target}{suffix}", headers=headers, **kwargs)
            body = await response.read()
            answers.append((response.status, json.loads(body)["error"]["code"] if body else None,
                            json.loads(body)["error"]["message"] if body else None))
        assert len(set(answers)) == 1 and answers[0][0] == 404, (method, suffix, answers)

    async def timing(target: str) -> float:
        samples = []
        for _ in range(60):
            started = time.perf_counter()
            await api.client.get(f"/v1/images/{target}/metadata", headers=stranger)
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    foreign, missing = await timing(record["id"]), await timing(MISSING)
    # Both are one B-tree lookup; a leak would be a DEK unwrap or a decryption (~10x more).
    assert abs(foreign - missing) < max(foreign, missing) * 0.5 + 0.002, (foreign, missing)


async def test_api2_tokens_are_stored_only_as_hashes_and_every_bad_token_is_401(api, service):
    token = await api.token()
    stored = service.index.read(lambda t: [key for key, _ in t.iter_docs(schema.DB_TOKENS)])
    assert schema.token_key(token) in stored
    assert all(token.encode() not in key for key in stored)
    for header in (f"Bearer {token[:-1]}", f"Bearer {token}A", f"bearer {token.upper()}", f"Token {token}", "Bearer " + "A" * 5000):
        response = await api.client.get("/v1/images/" + MISSING, headers={"Authorization": header})
        assert response.status in (401, 400), header[:20]
        if response.status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_api3_clients_cannot_set_server_owned_properties(api):
    for field, value in (("id", MISSING), ("tenant", OTHER), ("created_at", "2000-01-01T00:00:00Z"),
                         ("key_version", 9), ("size", 1), ("display_name", "x"), ("updated_at", "2000-01-01T00:00:00Z")):
        status, body = await api.upload(jpeg(b"img"), sample_metadata(**{field: value}), expect=None)
        assert status == 400 and body["error"]["code"] == "unknown_field", field
    record = await api.upload(jpeg(b"img"))
    for field, value in (("id", MISSING), ("tenant", OTHER), ("sha256", "0" * 64), ("created_at", "2000-01-01T00:00:00Z"), ("key_version", 2)):
        response = await api.client.patch(f"/v1/images/{record['id']}/metadata", json={field: value}, headers=await api.headers())
        assert response.status == 400, field
    again = await (await api.client.get(f"/v1/images/{record['id']}/metadata", headers=await api.headers())).json()
    assert again == record


async def test_api3_researchers_never_receive_personal_fields(api):
    record = await api.upload(jpeg(b"img"), sample_metadata(consent={"research": True}))
    researcher = await api.headers("researcher")
    for path in (f"/v1/images/{record['id']}/metadata",):
        body = await (await api.client.get(path, headers=researcher)).json()
        assert not {"patient_id", "description", "diagnosis"} & set(body)
    page = await (await api.client.post("/v1/search", json={}, headers=researcher)).json()
    assert page["items"] and all(not {"patient_id", "description", "diagnosis"} & set(item) for item in page["items"])
    text = json.dumps(page)
    assert "943 476 5919" not in text and "melanoma" not in text


async def test_api4_body_size_is_enforced_while_streaming_without_content_length(api, service):
    # aiohttp's client_max_size does not apply to streamed bodies: the service counts bytes.
    limit = service.config.max_image_bytes
    assert limit > 0
    sent = 0

    async def endless():
        nonlocal sent
        while True:
            sent += 1 << 20
            yield jpeg(b"\0" * (1 << 20))
            if sent > 64 << 20:
                return

    from dataclasses import replace

    service.context.config = replace(service.config, max_image_bytes=8 << 20)
    try:
        response = await api.client.post("/v1/images", data=upload_body(endless(), sample_metadata()), headers=await api.headers())
        assert response.status == 413
    finally:
        service.context.config = replace(service.config, max_image_bytes=limit)
    assert service.count_records() == 0


async def test_api4_multipart_part_count_header_size_and_search_limit_are_bounded(api, service):
    boundary = "B"
    parts = [("metadata", json.dumps(sample_metadata()).encode()), ("file", jpeg(b"img")), ("extra", b"x")]
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode() + payload + b"\r\n"
        for name, payload in parts
    ) + f"--{boundary}--\r\n".encode()
    response = await api.client.post("/v1/images", data=body, headers={**await api.headers(), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status == 400
    assert service.count_records() == 0
    async with aiohttp.ClientSession() as session:
        response = await session.get(api.client.make_url("/healthz"), headers={"X-Padding": "p" * 20_000})
        assert response.status in (400, 431)
    response = await api.client.post("/v1/search", json={"limit": 1_000_000}, headers=await api.headers())
    assert response.status == 400
    status, body = await api.upload(jpeg(b"x"), sample_metadata(tags=["t%d" % i for i in range(33)]), expect=None)
    assert status == 400 and body["error"]["field"] == "tags"


@pytest.mark.parametrize("path", ["/v1/search", "/v1/patients/erase"])
async def test_api4_oversized_json_bodies_are_413_before_being_parsed(api, path):
    response = await api.client.post(path, data=b"{" + b" " * (300 * 1024) + b"}",
                                     headers={**await api.headers("dpo"), "Content-Type": "application/json"})
    assert response.status == 413


async def test_api4_concurrent_uploads_are_capped(api, service):
    from dataclasses import replace

    original = service.context.config
    service.context.config = replace(original, max_concurrent_uploads=1)
    gate = asyncio.Event()

    async def slow():
        for _ in range(4):
            yield jpeg(b"a" * 1000)
            await asyncio.sleep(0.01)
        await gate.wait()

    try:
        first = asyncio.ensure_future(api.client.post("/v1/images", data=upload_body(slow(), sample_metadata()), headers=await api.headers()))
        for _ in range(100):
            if service.records.uploads_in_flight:
                break
            await asyncio.sleep(0.01)
        response = await api.client.post("/v1/images", data=upload_body(jpeg(b"second"), sample_metadata()), headers=await api.headers())
        assert response.status == 503 and response.headers["Retry-After"]
        gate.set()
        assert (await first).status == 201
    finally:
        service.context.config = original


@pytest.mark.parametrize("method, path", [
    ("post", "/v1/patients/erase"), ("post", "/v1/patients/legal-hold"), ("post", "/v1/patients/export"),
    ("post", "/v1/search"), ("patch", f"/v1/images/{MISSING}/metadata"), ("post", "/v1/images"),
])
async def test_api5_a_role_that_may_not_call_an_endpoint_gets_403_whatever_the_body(api, method, path):
    """Function-level authorization comes before the body is read, parsed or validated."""
    for role in ("operator", "auditor"):
        for body in (b"{not json", b'{"reason": "\\u0085"}', b"x" * 10_000):
            response = await getattr(api.client, method)(path, data=body, headers={**await api.headers(role), "Content-Type": "application/json"})
            assert response.status == 403, (role, path, body[:10])
