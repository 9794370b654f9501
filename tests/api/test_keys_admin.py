"""Rotation, background rewrap, retirement (the shred epoch) on the local keyring, over HTTP."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import STORES, jpeg, png, random_image, sample_metadata
from vault.auth import Principal, Role
from vault.errors import KeyMaterialError
from vault.ids import decode_id

OPERATOR = Principal("-", Role.ADMIN, "test")


@pytest.fixture(params=["fs"])
def store(request):
    """Rotation and rewrap touch only wrapped keys in the index, never a blob: these tests run
    on fs, except the end-to-end one that reads every image back after retirement (both)."""
    return request.param


async def wait_for_rewrap(api, headers):
    for _ in range(200):
        report = await (await api.client.get("/v1/admin/keys", headers=headers)).json()
        if report["rewrap"]["state"] == "done":
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"rewrap did not finish: {report}")


@pytest.mark.parametrize("store", STORES, indirect=True)
async def test_rotate_rewrap_retire_makes_old_wrapped_keys_useless_and_keeps_every_image(api, service):
    images = {}
    for i in range(300):
        data = random_image(100 + i, seed=i)
        record = await api.upload(data, sample_metadata(lesion_id=f"L-{i}"))
        images[record["id"]] = data
    first = next(iter(images))
    saved_v1 = service.index.read(lambda t: t.get_dek(decode_id(first)))
    assert saved_v1.startswith("local:v1:")
    operator = await api.headers("admin")

    response = await api.client.post("/v1/admin/keys/rotate", headers=operator)
    assert response.status == 202
    assert (await response.json())["current_version"] == 2
    new = await api.upload(jpeg(b"after rotation"))
    assert new["key_version"] == 2
    images[new["id"]] = jpeg(b"after rotation")
    report = await wait_for_rewrap(api, operator)
    assert report["dek_counts"] == {"2": 301}
    assert report["tenant_key_counts"] == {"2": 1}
    assert report["rewrap"]["rewrapped"] == 300

    response = await api.client.post("/v1/admin/keys/retire", headers=operator)
    assert response.status == 200, await response.text()
    assert (await response.json())["versions"] == [2]
    with pytest.raises(KeyMaterialError):
        await service.keys.unwrap_data_key(saved_v1)
    service.dek_cache.clear()
    service.context.tenant_keys.clear()
    for rid, data in images.items():
        response = await api.client.get(f"/v1/images/{rid}", headers=await api.headers())
        assert response.status == 200
        assert await response.read() == data
    found = await (await api.client.post("/v1/search", json={"patient_id": "943 476 5919", "limit": 1000}, headers=await api.headers())).json()
    assert len(found["items"]) == 301


async def test_retire_refuses_while_keys_are_on_old_versions(api, service):
    await api.upload(jpeg(b"img"))
    await service.rotate_keys(OPERATOR, background=False)
    response = await api.client.post("/v1/admin/keys/retire", headers=await api.headers("admin"))
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "rewrap_incomplete"


async def test_rewrap_resumes_from_its_cursor_after_an_interruption(api, service):
    for i in range(600):
        await service.create_image(Principal("clinic-a", Role.CLINICIAN, "t"), _meta(), "image/png", _body(png(b"%d" % i)))
    await service.rotate_keys(OPERATOR, background=False)
    calls = []

    def crash_after_first_batch(done, total):
        calls.append(done)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        await service.key_admin.run(progress=crash_after_first_batch)
    state = service.key_admin.job()
    assert state.state == "running" and state.cursor is not None and state.rewrapped == 256
    final = await service.key_admin.run()
    assert final.state == "done" and final.rewrapped == 600
    deks, _ = service.key_admin.counts()
    assert deks == {2: 600}


async def test_rewrap_does_not_resurrect_a_record_shredded_meanwhile(api, service):
    record = await api.upload(jpeg(b"img"), sample_metadata(retention={"class": "until", "until": "2020-01-01"}), role="dpo")
    await service.rotate_keys(OPERATOR, background=False)
    original = service.keys.rewrap_data_keys
    dek = service.index.read(lambda t: t.get_dek(decode_id(record["id"])))

    async def shred_while_at_kms(wrapped):
        result = await original(wrapped)
        if dek in wrapped:  # the record's own rewrap (tenant and integrity keys go first)
            await service.shred_record(Principal("clinic-a", Role.CLINICIAN, "t"), record["id"])
        return result

    service.keys.rewrap_data_keys = shred_while_at_kms  # a race, not a fake: the real keyring answers
    try:
        await service.key_admin.run()
    finally:
        del service.keys.rewrap_data_keys
    assert service.index.read(lambda t: t.get_dek(decode_id(record["id"]))) is None


async def test_key_endpoints_are_admin_only(api):
    for role in ("clinician", "dpo", "researcher", "auditor", "operator"):
        for method, path in (("get", "/v1/admin/keys"), ("post", "/v1/admin/keys/rotate"), ("post", "/v1/admin/keys/retire")):
            response = await getattr(api.client, method)(path, headers=await api.headers(role))
            assert response.status == 403


def _meta():
    from vault.metadata import parse_metadata

    return parse_metadata(sample_metadata())


async def _body(data):
    yield data
