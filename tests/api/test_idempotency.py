"""``Idempotency-Key`` on uploads and erasures: a retry gets the first outcome and nothing is done
twice; another request under the same key is 422, one while the first runs 409; keys belong to
the caller's name, expire, survive a reopen, and nothing stored can test a patient id."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp
import pytest

from tests.conftest import (
    PATIENT_IDS,
    jpeg,
    open_vault,
    png,
    sample_metadata,
    upload_body,
)
from vault.audit.query import AuditFilter
from vault.auth import Principal, Role
from vault.cli.common import COMMAND_LINE
from vault.errors import IdempotencyKeyInFlight, IdempotencyKeyMismatch, NotFound
from vault.idempotency import erasure_material, parse_idempotency_key, upload_material
from vault.index import schema
from vault.metadata import parse_metadata

KEY = '"8e03978e-40d5-43e8-bc93-6894a57f9324"'
ALICE = Principal("clinic-a", Role.CLINICIAN, "alice")


async def _post(api, data, metadata=None, *, key=KEY, content_type="image/jpeg", role="clinician"):
    headers = await api.headers(role)
    if key is not None:
        headers["Idempotency-Key"] = key
    response = await api.client.post("/v1/images", data=upload_body(data, metadata or sample_metadata(),
                                                                    content_type=content_type), headers=headers)
    return response, await response.json()


async def _erase(api, body, *, key=KEY):
    headers = {**await api.headers("dpo"), "Idempotency-Key": key}
    response = await api.client.post("/v1/patients/erase", json=body, headers=headers)
    return response, await response.json()


def _entries(service) -> int:
    return service.index.read(lambda t: t.count(schema.DB_IDEMPOTENCY))


def _audit(service, action):
    return [e.event for e in service.audit.page(0, 1000, AuditFilter()).entries if e.event.action == action]


async def _body(data: bytes):
    yield data


# replay ---------------------------------------------------------------------------------------
async def test_a_retry_with_the_same_key_gets_the_same_record_and_stores_nothing_new(api):
    service = api.service
    first, record = await _post(api, jpeg(b"lesion"))
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    again, replayed = await _post(api, jpeg(b"lesion"))
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == f"/v1/images/{record['id']}"
    assert replayed == record
    assert service.count_records() == 1
    assert len([p for p in service.config.blobs_dir.rglob("*") if p.is_file()]) == 1
    assert _entries(service) == 2  # the entry and its place in the expiry queue
    creates = _audit(service, "create")
    assert [c.outcome for c in creates] == ["ok", "ok"]
    assert "idempotent_replay" not in creates[0].details and creates[1].details["idempotent_replay"] is True
    assert creates[1].record_ids == creates[0].record_ids


async def test_a_replay_shows_the_record_as_it_is_now(api):
    _, record = await _post(api, jpeg())
    patched = await api.client.patch(f"/v1/images/{record['id']}/metadata", json={"tags": ["reviewed"]},
                                     headers={**await api.headers(), "Content-Type": "application/merge-patch+json"})
    assert patched.status == 200
    again, replayed = await _post(api, jpeg())
    assert again.status == 201 and replayed["tags"] == ["reviewed"] and replayed["id"] == record["id"]


async def test_metadata_is_compared_as_parsed_not_as_sent(api):
    _, record = await _post(api, jpeg(), sample_metadata())
    reordered = json.dumps(dict(reversed(list(sample_metadata().items()))), indent=4)
    again, replayed = await _post(api, jpeg(), reordered)
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true" and replayed["id"] == record["id"]


async def test_a_replay_of_a_record_shredded_since_is_404(api):
    _, record = await _post(api, jpeg())
    deleted = await api.client.delete(f"/v1/images/{record['id']}?override=true&reason=duplicate",
                                      headers=await api.headers("dpo"))
    assert deleted.status == 200
    again, body = await _post(api, jpeg())
    assert again.status == 404 and body["error"]["code"] == "not_found"
    assert api.service.count_records() == 0


# mismatch -------------------------------------------------------------------------------------
@pytest.mark.parametrize("change", ["metadata", "body", "content_type"])
async def test_the_same_key_with_another_request_is_422_and_stores_nothing(api, change):
    service = api.service
    await _post(api, jpeg(b"first"))
    data, metadata, content_type = jpeg(b"first"), sample_metadata(), "image/jpeg"
    if change == "metadata":
        metadata = sample_metadata(patient_id=PATIENT_IDS[1])
    elif change == "body":
        data = jpeg(b"second")
    else:
        data, content_type = png(b"first"), "image/png"
    response, body = await _post(api, data, metadata, content_type=content_type)
    assert response.status == 422 and body["error"]["code"] == "idempotency_key_mismatch"
    assert PATIENT_IDS[1] not in json.dumps(body)
    assert service.count_records() == 1
    assert len([p for p in service.config.blobs_dir.rglob("*") if p.is_file()]) == 1
    assert [c.outcome for c in _audit(service, "create")] == ["ok", "idempotency_key_mismatch"]


@pytest.mark.parametrize("header", [
    "8e03978e-40d5-43e8-bc93-6894a57f9324",  # an sf-token, not an sf-string
    '""', '"' + "k" * 256 + '"', '"caf\u00e9"', '"a"b"', '"tab\there"', '"trailing\\"', "'single'",
])
async def test_a_malformed_key_is_400_and_nothing_is_stored(api, header):
    response, body = await _post(api, jpeg(), key=header)
    assert response.status == 400 and body["error"]["code"] == "invalid_request"
    assert body["error"]["field"] == "Idempotency-Key"
    assert api.service.count_records() == 0


def test_keys_are_sf_strings_with_escapes():
    assert parse_idempotency_key('"abc"') == "abc"
    assert parse_idempotency_key(' "a\\"b\\\\c" ') == 'a"b\\c'
    assert parse_idempotency_key('"' + "k" * 255 + '"') == "k" * 255
    assert parse_idempotency_key(None) is None


# in flight ------------------------------------------------------------------------------------
async def test_a_request_with_the_key_of_one_in_progress_is_409_and_the_first_completes(api):
    service = api.service
    gate = asyncio.Event()

    start = jpeg(bytes(1 << 20))  # large enough that the client sends it at once

    async def slow():
        yield start
        await gate.wait()
        yield b"end"

    first = asyncio.ensure_future(_post(api, slow()))
    for _ in range(200):
        if service.idempotency.in_flight:
            break
        await asyncio.sleep(0.01)
    assert service.idempotency.in_flight == 1
    second, body = await _post(api, start + b"end")
    assert second.status == 409 and body["error"]["code"] == "idempotency_key_in_flight"
    gate.set()
    response, record = await first
    assert response.status == 201
    third, replayed = await _post(api, start + b"end")
    assert third.status == 201 and replayed["id"] == record["id"] and third.headers["Idempotent-Replayed"] == "true"
    assert service.count_records() == 1 and service.idempotency.in_flight == 0


async def test_concurrent_requests_with_one_key_make_one_record(service):
    metadata = parse_metadata(sample_metadata())
    results = await asyncio.gather(*(
        service.create_image(ALICE, metadata, "image/jpeg", _body(jpeg(b"same")), idempotency_key="burst")
        for _ in range(8)
    ), return_exceptions=True)
    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, IdempotencyKeyInFlight) for r in refused)
    assert {r.id for r in created} == {created[0].id} and service.count_records() == 1
    assert sum(not r.replayed for r in created) == 1


async def test_a_failed_request_leaves_its_key_free(service):
    metadata = parse_metadata(sample_metadata())
    with pytest.raises(Exception) as failed:
        await service.create_image(ALICE, metadata, "image/jpeg", _body(b"GIF89a"), idempotency_key="k")
    assert failed.value.code == "content_mismatch"
    record = await service.create_image(ALICE, metadata, "image/jpeg", _body(jpeg()), idempotency_key="k")
    assert not record.replayed and service.idempotency.in_flight == 0


# scope ----------------------------------------------------------------------------------------
async def test_keys_belong_to_the_tenant_and_the_callers_name_not_to_a_token(service):
    metadata = parse_metadata(sample_metadata())
    first = await service.create_image(ALICE, metadata, "image/jpeg", _body(jpeg()), idempotency_key="k")
    # A new token (or a refreshed JWT) with the same name: the same caller.
    refreshed = Principal("clinic-a", Role.DPO, "alice")
    again = await service.create_image(refreshed, metadata, "image/jpeg", _body(jpeg()), idempotency_key="k")
    assert again.replayed and again.id == first.id
    others = [
        Principal("clinic-a", Role.CLINICIAN, "bob"),
        Principal("clinic-b", Role.CLINICIAN, "alice"),
        Principal("clinic-a", Role.CLINICIAN, "alice", via="oidc"),  # a JWT subject is not a token name
        Principal("clinic-a", Role.CLINICIAN, "alice", on_behalf_of="dr.jones"),
    ]
    for other in others:
        record = await service.create_image(other, metadata, "image/jpeg", _body(jpeg()), idempotency_key="k")
        assert not record.replayed and record.id != first.id, other
    with pytest.raises(NotFound):  # the first record, asked for from another tenant under the same name
        await service.get_record(Principal("clinic-b", Role.CLINICIAN, "alice"), first.id)


# expiry and restart ---------------------------------------------------------------------------
async def test_a_key_expires_after_the_ttl_and_the_purge_removes_it(api, clock):
    service = api.service
    _, record = await _post(api, jpeg())
    clock.advance(seconds=service.config.idempotency_ttl - 60)
    response, replayed = await _post(api, jpeg())
    assert response.headers.get("Idempotent-Replayed") == "true" and replayed["id"] == record["id"]
    assert await service.purge_idempotency() == 0 and _entries(service) == 2
    clock.advance(seconds=120)
    response, fresh = await _post(api, jpeg())
    assert response.status == 201 and "Idempotent-Replayed" not in response.headers and fresh["id"] != record["id"]
    assert _entries(service) == 2  # the expired entry was replaced, with its queue place
    clock.advance(seconds=service.config.idempotency_ttl + 1)
    assert await service.purge_idempotency() == 1
    assert _entries(service) == 0


async def test_keys_survive_a_reopen_of_the_data_directory(config, clock):
    metadata = parse_metadata(sample_metadata())
    vault = await open_vault(config, clock)
    try:
        first = await vault.create_image(ALICE, metadata, "image/jpeg", _body(jpeg()), idempotency_key="k")
    finally:
        await vault.close()
    vault = await open_vault(config, clock)
    try:
        again = await vault.create_image(ALICE, metadata, "image/jpeg", _body(jpeg()), idempotency_key="k")
        assert again.replayed and again.id == first.id and vault.count_records() == 1
        with pytest.raises(IdempotencyKeyMismatch):
            await vault.create_image(ALICE, metadata, "image/jpeg", _body(jpeg(b"other")), idempotency_key="k")
    finally:
        await vault.close()


# erasure --------------------------------------------------------------------------------------
async def test_an_erasure_retry_returns_the_stored_report_and_shreds_nothing_more(api):
    service = api.service
    for n in range(2):
        await api.upload(jpeg(b"%d" % n))
    body = {"patient_id": PATIENT_IDS[0], "reason": "patient request", "override_retention": True}
    response, report = await _erase(api, body)
    assert response.status == 200 and report["shredded"] == 2 and "Idempotent-Replayed" not in response.headers
    survivor = await api.upload(jpeg(b"later"))
    again, replayed = await _erase(api, body)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert replayed == report
    assert service.count_records() == 1
    assert (await api.client.get(f"/v1/images/{survivor['id']}/metadata", headers=await api.headers())).status == 200
    erases = _audit(service, "erase")
    assert [e.details.get("idempotent_replay") for e in erases] == [None, True]
    assert erases[1].record_ids == erases[0].record_ids and len(erases[0].record_ids) == 2
    other, mismatch = await _erase(api, {**body, "reason": "another reason"})
    assert other.status == 422 and mismatch["error"]["code"] == "idempotency_key_mismatch"
    assert service.count_records() == 1


async def test_an_erasure_key_is_forgotten_at_the_shred_epoch(api):
    service = api.service
    await api.upload(jpeg())
    body = {"patient_id": PATIENT_IDS[0], "reason": "patient request", "override_retention": True}
    _, report = await _erase(api, body)
    assert report["shredded"] == 1
    await service.run_epoch(COMMAND_LINE)
    again, rerun = await _erase(api, body)
    assert again.status == 200 and "Idempotent-Replayed" not in again.headers and rerun["shredded"] == 0


# nothing personal on disk ---------------------------------------------------------------------
async def test_the_stored_idempotency_data_cannot_test_a_patient_id(api):
    """The raw index holds neither the keys nor the patient id nor any unkeyed digest of what
    identifies the requests (which a guess could be tested against)."""
    service = api.service
    patient = "IDEMPOTENCY-PATIENT-7731"
    upload_key, erase_key = "upload-key-7c1f0e", "erase-key-93ab2d"
    metadata = sample_metadata(patient_id=patient)
    data = jpeg(b"known image")
    response, _ = await _post(api, data, metadata, key=f'"{upload_key}"')
    assert response.status == 201
    body = {"patient_id": patient, "reason": "patient request", "override_retention": False}
    response, _ = await _erase(api, body, key=f'"{erase_key}"')
    assert response.status == 200
    raw = b"".join(p.read_bytes() for p in service.config.index_dir.iterdir() if p.is_file())
    upload = upload_material(parse_metadata(metadata).to_json(), "image/jpeg", hashlib.sha256(data).hexdigest())
    erasure = erasure_material(patient, "patient request", False)
    forbidden = [patient.encode(), patient.encode("utf-16-le"), upload_key.encode(), erase_key.encode()]
    for material in (upload, erasure):
        forbidden += [hashlib.sha256(material).digest(), hashlib.sha256(material).hexdigest().encode()]
    for needle in forbidden:
        assert needle not in raw, needle[:16]
    assert _entries(service) == 4  # both entries are there (and sealed)
    values = service.index.read(lambda t: [v for _, v in t.scan_items(schema.DB_IDEMPOTENCY, schema.IDEMPOTENCY_ENTRY,
                                                                        schema.IDEMPOTENCY_EXPIRY)])
    assert len(values) == 2 and all(v[0] == 0x03 for v in values)
    assert all(patient.encode() not in v for v in values)


async def test_a_forged_outcome_is_refused_not_replayed(api):
    service = api.service
    await _post(api, jpeg())

    def forge(txn):
        (key, value), = list(txn.scan_items(schema.DB_IDEMPOTENCY, schema.IDEMPOTENCY_ENTRY, schema.IDEMPOTENCY_EXPIRY))
        txn.put_bytes(schema.DB_IDEMPOTENCY, key, value[:-2] + b"0}")

    await service.index.write(forge)
    response, body = await _post(api, jpeg())
    assert response.status == 500 and body["error"]["code"] == "integrity_error"
    assert service.metrics.index_integrity_errors.labels("idempotency")._value.get() == 1


async def test_an_upload_without_a_key_is_unaffected(api):
    for _ in range(2):
        response, _ = await _post(api, jpeg(), key=None)
        assert response.status == 201 and "Idempotent-Replayed" not in response.headers
    assert api.service.count_records() == 2 and _entries(api.service) == 0


async def test_the_http_client_sees_the_replay_header_on_a_second_session(api):
    """A client that lost its connection retries on a new one."""
    _, record = await _post(api, jpeg())
    async with aiohttp.ClientSession(base_url=str(api.client.make_url("/"))) as session:
        headers = {**await api.headers(), "Idempotency-Key": KEY}
        async with session.post("/v1/images", data=upload_body(jpeg(), sample_metadata()), headers=headers) as r:
            assert r.status == 201 and r.headers["Idempotent-Replayed"] == "true"
            assert (await r.json())["id"] == record["id"]


def test_the_fingerprint_subkey_is_hkdf_sha256_of_the_dek():
    """docs/format.md, "Key derivation": written out for speed, it must stay RFC 5869 HKDF."""
    import os

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from vault.store.format import HKDF_INFO_IDEMPOTENCY, derive_idempotency_key

    for _ in range(20):
        dek, rid = os.urandom(32), os.urandom(16)
        expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=rid, info=HKDF_INFO_IDEMPOTENCY).derive(dek)
        assert derive_idempotency_key(dek, rid) == expected
