"""Every malformed request gets its docs/api.md status and error JSON, stores nothing, never a 500."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.conftest import INDEXES, STORES, jpeg, random_image, sample_metadata, upload_body
from tests.infra.blobs import open_raw_blobs


@pytest.fixture(params=INDEXES)
def index_engine(request):
    """The record core runs on both index engines (postgres with the fs store only)."""
    return request.param


@pytest.fixture(params=STORES)
def store(request):
    """Every test here runs on the filesystem and on S3 (SeaweedFS)."""
    return request.param


def assert_error(status_seen, body, status, code):
    assert status_seen == status, body
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"]["request_id"]


async def stored_blobs(service):
    """Every committed or temporary blob, on whichever backend the service uses."""
    async with open_raw_blobs(service.config) as raw:
        return await raw.leftovers()


async def assert_nothing_stored(service):
    assert service.count_records() == 0
    assert await stored_blobs(service) == []


def raw_multipart(parts: list[tuple[str, str, bytes]], boundary: str = "BOUNDARY") -> tuple[bytes, str]:
    chunks = []
    for name, content_type, payload in parts:
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n".encode() + payload + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    "metadata, status, code",
    [
        ({"captured_at": "2026-11-20T10:15:00Z", "modality": "clinical", "body_site": "arm"}, 400, "invalid_metadata"),
        (sample_metadata(colour="red"), 400, "unknown_field"),
        (sample_metadata(id="01ABC"), 400, "unknown_field"),
        (sample_metadata(tenant="other"), 400, "unknown_field"),
        (sample_metadata(key_version=3), 400, "unknown_field"),
        (sample_metadata(created_at="2020-01-01T00:00:00Z"), 400, "unknown_field"),
        (sample_metadata(patient_id=12345), 400, "invalid_metadata"),
        (sample_metadata(patient_id=""), 400, "invalid_metadata"),
        (sample_metadata(captured_at="yesterday"), 400, "invalid_metadata"),
        (sample_metadata(captured_at="2026-11-20T10:15:00"), 400, "invalid_metadata"),
        (sample_metadata(modality="xray"), 400, "invalid_metadata"),
        (sample_metadata(body_site="Left Arm"), 400, "invalid_metadata"),
        (sample_metadata(tags="follow-up"), 400, "invalid_metadata"),
        (sample_metadata(tags=[1]), 400, "invalid_metadata"),
        (sample_metadata(consent={"research": "yes"}), 400, "invalid_metadata"),
        (sample_metadata(consent={"marketing": True}), 400, "unknown_field"),
        (sample_metadata(retention={"class": "forever"}), 400, "invalid_metadata"),
        (sample_metadata(retention={"class": "until"}), 400, "invalid_metadata"),
        (sample_metadata(legal_hold="no"), 400, "invalid_metadata"),
        (sample_metadata(sha256="abc"), 400, "invalid_metadata"),
        ([1, 2, 3], 400, "invalid_request"),
    ],
)
async def test_invalid_metadata_is_rejected_naming_the_field_and_nothing_is_stored(api, service, metadata, status, code):
    status_seen, body = await api.upload(jpeg(b"image-bytes"), metadata, expect=None)
    assert_error(status_seen, body, status, code)
    # The request id is random hex and contains "943" in about one response in 140: leave it out.
    shown = {key: value for key, value in body["error"].items() if key != "request_id"}
    assert "943" not in json.dumps(shown)
    await assert_nothing_stored(service)


async def test_metadata_that_is_not_json_is_400(api, service):
    status, body = await api.upload(jpeg(b"img"), b"{not json", expect=None)
    assert_error(status, body, 400, "invalid_request")
    await assert_nothing_stored(service)


async def test_file_before_metadata_is_accepted_and_validated_before_commit(api, service):
    body, content_type = raw_multipart([("file", "image/jpeg", jpeg(b"img")), ("metadata", "application/json", json.dumps(sample_metadata()).encode())])
    response = await api.client.post("/v1/images", data=body, headers={**await api.headers(), "Content-Type": content_type})
    record = await response.json()
    assert response.status == 201, record
    assert record["size"] == len(jpeg(b"img")) and record["patient_id"] == "943 476 5919"
    bad, content_type = raw_multipart([("file", "image/jpeg", jpeg(b"img")), ("metadata", "application/json", json.dumps(sample_metadata(modality="xray")).encode())])
    response = await api.client.post("/v1/images", data=bad, headers={**await api.headers(), "Content-Type": content_type})
    assert_error(response.status, await response.json(), 400, "invalid_metadata")
    lonely, content_type = raw_multipart([("file", "image/jpeg", jpeg(b"img"))])
    response = await api.client.post("/v1/images", data=lonely, headers={**await api.headers(), "Content-Type": content_type})
    assert_error(response.status, await response.json(), 400, "missing_part")
    assert service.count_records() == 1
    leftovers = await stored_blobs(service)
    assert len(leftovers) == 1 and record["id"] in leftovers[0]


async def test_metadata_without_file_is_missing_part(api, service):
    body, content_type = raw_multipart([("metadata", "application/json", json.dumps(sample_metadata()).encode())])
    response = await api.client.post("/v1/images", data=body, headers={**await api.headers(), "Content-Type": content_type})
    assert_error(response.status, await response.json(), 400, "missing_part")
    await assert_nothing_stored(service)


async def test_non_multipart_upload_is_missing_part(api, service):
    response = await api.client.post("/v1/images", data=b"raw image", headers={**await api.headers(), "Content-Type": "image/jpeg"})
    assert_error(response.status, await response.json(), 400, "missing_part")
    await assert_nothing_stored(service)


@pytest.mark.parametrize(
    "body",
    [
        b"garbage without boundaries",
        b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{}",  # unterminated
        b"--BOUNDARY\r\n\r\n\r\n--BOUNDARY--\r\n",
    ],
)
async def test_malformed_multipart_is_400_and_stores_nothing(api, service, body):
    response = await api.client.post(
        "/v1/images", data=body,
        headers={**await api.headers(), "Content-Type": "multipart/form-data; boundary=BOUNDARY"},
    )
    payload = await response.json()
    assert response.status == 400, payload
    assert payload["error"]["code"] in ("missing_part", "invalid_request", "invalid_metadata")
    await assert_nothing_stored(service)


async def test_truncated_file_part_is_rejected_and_stores_nothing(api, service):
    body, content_type = raw_multipart([
        ("metadata", "application/json", json.dumps(sample_metadata()).encode()),
        ("file", "image/jpeg", random_image(300_000)),
    ])
    cut = body[: len(body) - 200_000]  # the closing boundary never arrives
    response = await api.client.post("/v1/images", data=cut, headers={**await api.headers(), "Content-Type": content_type})
    assert response.status == 400, await response.text()
    await assert_nothing_stored(service)


async def test_wrong_digest_is_422_and_stores_nothing(api, service):
    status, body = await api.upload(jpeg(b"actual bytes"), sample_metadata(sha256="ab" * 32), expect=None)
    assert_error(status, body, 422, "digest_mismatch")
    await assert_nothing_stored(service)


async def test_right_digest_is_accepted(api):
    import hashlib

    data = jpeg(b"actual bytes")
    record = await api.upload(data, sample_metadata(sha256=hashlib.sha256(data).hexdigest().upper()))
    assert record["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("content_type", ["text/html", "application/octet-stream", "image/svg+xml", ""])
async def test_disallowed_content_type_is_415(api, service, content_type):
    status, body = await api.upload(b"<svg/>", content_type=content_type or "application/x-empty", expect=None)
    assert_error(status, body, 415, "unsupported_media_type")
    await assert_nothing_stored(service)


@pytest.mark.parametrize(
    "limit, piece, pieces",
    [
        (100_000, 10_000, 40),
        # Past the limit only after 12 MiB: on S3 a multipart upload with a part sent is under
        # way when the 413 comes, and must be aborted.
        (12 << 20, 1 << 20, 20),
    ],
)
async def test_oversize_body_is_413_while_streaming_and_stores_nothing(aiohttp_client, config, limit, piece, pieces):
    from tests.conftest import open_vault
    from vault.api.app import create_app
    from vault.auth import Role

    config = config.with_overrides(max_image_bytes=limit)
    vault = await open_vault(config)
    try:
        client = await aiohttp_client(create_app(config, vault=vault))
        token, _ = await vault.tokens.create("clinic-a", Role.CLINICIAN, "t")

        async def endless():  # no Content-Length: the limit must hold while streaming
            for _ in range(pieces):
                yield jpeg(b"\0" * piece)

        response = await client.post("/v1/images", data=upload_body(endless(), sample_metadata()), headers={"Authorization": f"Bearer {token}"})
        assert_error(response.status, await response.json(), 413, "too_large")
        await assert_nothing_stored(vault)
    finally:
        await vault.close()


async def test_oversize_metadata_part_is_413(api, service):
    status, body = await api.upload(jpeg(b"x"), sample_metadata(description="d" * 70_000), expect=None)
    assert_error(status, body, 413, "too_large")
    await assert_nothing_stored(service)


@pytest.mark.parametrize("path", ["/v1/images/01JD0000000000000000000000", "/v1/images/not-an-id", "/v1/images/../../etc/passwd",
                                  "/v1/images/01JD0000000000000000000000/metadata"])
async def test_unknown_or_malformed_id_is_404(api, path):
    response = await api.client.get(path, headers=await api.headers())
    assert_error(response.status, await response.json(), 404, "not_found")


async def test_another_tenants_record_is_indistinguishable_from_a_missing_one(api):
    record = await api.upload(jpeg(b"img"))
    other = await api.headers(tenant="clinic-b")
    missing = "01JD0000000000000000000000"
    for method, suffix in (("get", ""), ("head", ""), ("get", "/metadata"), ("delete", ""), ("patch", "/metadata")):
        kwargs = {"json": {"lesion_id": "x"}} if method == "patch" else {}
        a = await getattr(api.client, method)(f"/v1/images/{record['id']}{suffix}", headers=other, **kwargs)
        b = await getattr(api.client, method)(f"/v1/images/{missing}{suffix}", headers=other, **kwargs)
        assert a.status == b.status == 404
        if method != "head":
            body_a, body_b = await a.json(), await b.json()
            assert body_a["error"]["code"] == body_b["error"]["code"] == "not_found"
            assert body_a["error"]["message"] == body_b["error"]["message"]
    found = await (await api.client.post("/v1/search", json={"patient_id": "943 476 5919"}, headers=other)).json()
    assert found["items"] == []


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer ivt_forged-token-forged-token-forged-token", "Bearer not-a-token"],
)
async def test_missing_or_forged_token_is_401(api, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (("get", "/v1/images/01JD0000000000000000000000"), ("post", "/v1/search"), ("post", "/v1/images")):
        response = await getattr(api.client, method)(path, headers=headers)
        assert_error(response.status, await response.json(), 401, "unauthorized")


async def test_revoked_and_expired_tokens_are_401(api, service):
    from vault.auth import Role

    token, _ = await service.tokens.create("clinic-a", Role.CLINICIAN, "soon-revoked")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await api.client.post("/v1/search", json={}, headers=headers)).status == 200
    await service.tokens.revoke("soon-revoked")
    assert (await api.client.post("/v1/search", json={}, headers=headers)).status == 401
    expired, _ = await service.tokens.create("clinic-a", Role.CLINICIAN, "short", ttl="1s")
    await asyncio.sleep(1.1)
    response = await api.client.post("/v1/search", json={}, headers={"Authorization": f"Bearer {expired}"})
    assert response.status == 401


async def test_operator_cannot_touch_images_and_clinician_cannot_administer(api):
    record = await api.upload(jpeg(b"img"))
    operator = await api.headers("operator")
    for method, path in (("get", f"/v1/images/{record['id']}"), ("get", f"/v1/images/{record['id']}/metadata"),
                         ("post", "/v1/search"), ("delete", f"/v1/images/{record['id']}")):
        kwargs = {"json": {}} if method == "post" else {}
        response = await getattr(api.client, method)(path, headers=operator, **kwargs)
        assert_error(response.status, await response.json(), 403, "forbidden")
    status, body = await api.upload(jpeg(b"img"), role="operator", expect=None)
    assert_error(status, body, 403, "forbidden")
    response = await api.client.get("/v1/admin/stats", headers=await api.headers())
    assert_error(response.status, await response.json(), 403, "forbidden")
    response = await api.client.get("/v1/admin/stats", headers=operator)
    assert response.status == 200
    assert (await response.json())["records"] == 1


@pytest.mark.parametrize(
    "body, code",
    [
        ({"limit": 0}, "invalid_request"),
        ({"limit": 1001}, "invalid_request"),
        ({"limit": "10"}, "invalid_request"),
        ({"modality": "xray"}, "invalid_request"),
        ({"consent": "marketing"}, "invalid_request"),
        ({"captured_from": "last week"}, "invalid_request"),
        ({"cursor": "!!!"}, "invalid_request"),
        ({"tag": "\ud800"}, "invalid_request"),
        ({"lesion_id": "x" * 129}, "invalid_request"),
        ({"colour": "red"}, "unknown_field"),
        ([], "invalid_request"),
    ],
)
async def test_bad_search_requests_are_400(api, body, code):
    response = await api.client.post("/v1/search", json=body, headers=await api.headers())
    assert_error(response.status, await response.json(), 400, code)


async def test_empty_cursor_means_the_first_page(api):
    await api.upload(jpeg(b"img"))
    response = await api.client.post("/v1/search", json={"cursor": ""}, headers=await api.headers())
    assert response.status == 200 and len((await response.json())["items"]) == 1


async def test_lone_surrogates_in_metadata_are_400_not_500(api, service):
    status, body = await api.upload(jpeg(b"img"), sample_metadata(lesion_id="\ud800"), expect=None)
    assert_error(status, body, 400, "invalid_metadata")
    await assert_nothing_stored(service)


async def test_search_body_that_is_not_json_is_400(api):
    response = await api.client.post("/v1/search", data=b"{", headers={**await api.headers(), "Content-Type": "application/json"})
    assert_error(response.status, await response.json(), 400, "invalid_request")


async def test_unknown_route_and_method_get_json_errors(api):
    response = await api.client.get("/v1/nothing-here", headers=await api.headers())
    assert_error(response.status, await response.json(), 404, "not_found")
    response = await api.client.put("/v1/search", headers=await api.headers())
    assert_error(response.status, await response.json(), 405, "method_not_allowed")


async def test_every_response_carries_a_request_id(api):
    for path in ("/healthz", "/v1/info", "/v1/images/xyz"):
        response = await api.client.get(path)
        assert response.headers.get("X-Request-Id")


async def test_client_disconnect_mid_upload_leaves_nothing(api, service):
    url = api.client.make_url("/v1/images")

    async def slow():
        yield jpeg(b"\0" * 100_000)
        await asyncio.sleep(0.3)
        raise aiohttp.ClientPayloadError("client gave up")

    async with aiohttp.ClientSession() as session:
        with pytest.raises(Exception):
            await session.post(url, data=upload_body(slow(), sample_metadata()), headers=await api.headers())
    for _ in range(50):
        await asyncio.sleep(0.05)
        if not await stored_blobs(service):
            break
    await assert_nothing_stored(service)


async def test_idle_timeout_expires_an_unused_token_but_not_a_busy_one(api, service):
    from vault.auth import Role

    token, _ = await service.tokens.create("clinic-a", Role.CLINICIAN, "interactive", idle_timeout="1s")
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(6):  # busy: used every 0.3 s for 1.8 s, longer than the idle limit
        assert (await api.client.post("/v1/search", json={}, headers=headers)).status == 200
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.3)
    assert (await api.client.post("/v1/search", json={}, headers=headers)).status == 401


async def test_a_stalled_upload_body_times_out_and_stores_nothing(aiohttp_client, tmp_path):
    from tests.conftest import Api, make_config, open_vault
    from vault.api.app import create_app

    config = make_config(tmp_path / "data", body_read_timeout=0.5)
    vault = await open_vault(config)
    try:
        api = Api(await aiohttp_client(create_app(config, vault=vault)), vault, {})

        async def stalls():
            for _ in range(4):
                yield jpeg(b"\0" * 2000)
                await asyncio.sleep(0.01)
            await asyncio.sleep(3)
            yield b"too late"

        response = await api.client.post("/v1/images", data=upload_body(stalls(), sample_metadata()), headers=await api.headers())
        body = await response.json()
        assert response.status == 408 and body["error"]["code"] == "request_timeout"
        await assert_nothing_stored(vault)
    finally:
        await vault.close()


@pytest.mark.parametrize("captured_at", ["0405-07-28T00:27:33.957159Z", "2016-12-31T23:59:60Z", "2026-11-20t10:15:00+05:30"])
async def test_unusual_but_valid_rfc3339_timestamps_are_accepted(api, captured_at):
    record = await api.upload(jpeg(b"img"), sample_metadata(captured_at=captured_at))
    response = await api.client.get(f"/v1/images/{record['id']}/metadata", headers=await api.headers())
    assert (await response.json())["captured_at"] == record["captured_at"]


async def test_an_upload_trickling_below_the_minimum_rate_is_cut_off_and_stores_nothing(aiohttp_client, tmp_path):
    from tests.conftest import Api, make_config, open_vault
    from vault.api.app import create_app

    config = make_config(tmp_path / "data", min_upload_rate=100_000, upload_rate_window=0.5, body_read_timeout=5)
    vault = await open_vault(config)
    try:
        api = Api(await aiohttp_client(create_app(config, vault=vault)), vault, {})

        async def trickles():  # every read arrives well within body_read_timeout, but too slowly
            for _ in range(40):
                yield jpeg(b"\\0" * 1000)
                await asyncio.sleep(0.05)

        started = asyncio.get_running_loop().time()
        response = await api.client.post("/v1/images", data=upload_body(trickles(), sample_metadata()), headers=await api.headers())
        body = await response.json()
        assert response.status == 408 and body["error"]["code"] == "request_timeout"
        assert asyncio.get_running_loop().time() - started < 1.5  # cut off after a window, not at the end
        await assert_nothing_stored(vault)
        assert vault.records.uploads_in_flight == 0
        fast = await api.upload(random_image(200_000))  # a normal client is served as before
        assert fast["size"] == 200_000
    finally:
        await vault.close()
