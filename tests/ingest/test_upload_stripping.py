"""Stripping as clients see it: digests of what was sent and of what was stored, per policy."""

from __future__ import annotations

import hashlib
import io

import piexif
import pytest
from PIL import Image

from tests.conftest import Api, make_config, open_vault, sample_metadata
from tests.ingest.test_strip import GPS_BYTES, jpeg_with_everything, png_with_everything
from vault.api.app import create_app
from vault.ingest.strip import JpegStripper


@pytest.fixture
async def policy_api(aiohttp_client, tmp_path, request):
    config = make_config(tmp_path / "data", strip_metadata=request.param)
    service = await open_vault(config)
    client = await aiohttp_client(create_app(config, vault=service))
    yield Api(client, service, {})
    await service.close()


async def download(api, record):
    response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
    assert response.status == 200
    return await response.read()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        return img.tobytes()


@pytest.mark.parametrize("policy_api", ["gps"], indirect=True)
async def test_default_policy_stores_the_jpeg_without_gps_and_reports_both_digests(policy_api):
    original = jpeg_with_everything()
    record = await policy_api.upload(original, sample_metadata(sha256=sha(original)))
    stored = await download(policy_api, record)
    assert record["received_sha256"] == sha(original)
    assert record["sha256"] == sha(stored) != sha(original)
    assert record["size"] == len(stored)
    assert GPS_BYTES not in stored and piexif.load(stored)["GPS"] == {}
    assert pixels(stored) == pixels(original)
    metadata = await (await policy_api.client.get(f"/v1/images/{record['id']}/metadata", headers=await policy_api.headers())).json()
    assert metadata["received_sha256"] == sha(original)


@pytest.mark.parametrize("policy_api", ["gps"], indirect=True)
async def test_the_client_digest_is_checked_against_the_bytes_as_sent(policy_api):
    original = jpeg_with_everything()
    stripper = JpegStripper("gps")
    stored_digest = sha(stripper.feed(original) + stripper.finish())  # what would be stored: wrong
    status, body = await policy_api.upload(original, sample_metadata(sha256=stored_digest), expect=None)
    assert status == 422 and body["error"]["code"] == "digest_mismatch"
    assert policy_api.service.count_records() == 0


@pytest.mark.parametrize("policy_api", ["all"], indirect=True)
async def test_all_policy_stores_no_exif_at_all(policy_api):
    for original, content_type in ((jpeg_with_everything(), "image/jpeg"), (png_with_everything(), "image/png")):
        record = await policy_api.upload(original, sample_metadata(), content_type=content_type)
        stored = await download(policy_api, record)
        with Image.open(io.BytesIO(stored)) as img:
            img.load()
            assert dict(img.getexif()) == {}
        assert b"DermaCam" not in stored
        assert pixels(stored) == pixels(original)
        assert record["received_sha256"] == sha(original)


@pytest.mark.parametrize("policy_api", ["none"], indirect=True)
async def test_none_policy_stores_the_bytes_exactly_as_sent(policy_api):
    for original, content_type in ((jpeg_with_everything(), "image/jpeg"), (png_with_everything(), "image/png")):
        record = await policy_api.upload(original, sample_metadata(sha256=sha(original)), content_type=content_type)
        assert await download(policy_api, record) == original
        assert record["sha256"] == sha(original) and "received_sha256" not in record


@pytest.mark.parametrize("policy_api", ["gps"], indirect=True)
async def test_images_without_location_data_are_stored_unchanged(policy_api):
    plain = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(plain, "PNG")
    record = await policy_api.upload(plain.getvalue(), sample_metadata(), content_type="image/png")
    assert "received_sha256" not in record
    assert await download(policy_api, record) == plain.getvalue()
