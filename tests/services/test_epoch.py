"""The shred epoch and the key lifecycle around it: nothing acknowledged is lost, everything
erased before it is left under destroyed keys."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import PATIENT_IDS, jpeg, open_vault, random_image, sample_metadata
from vault.auth import Principal, Role
from vault.errors import KeyMaterialError
from vault.ids import decode_id
from vault.index import patient_ids, schema
from vault.keys.base import key_version_of
from vault.metadata import parse_metadata
from vault.patients import ErasureRequest
from vault.search import SearchQuery
from vault.service import Vault

OPERATOR = Principal("-", Role.ADMIN, "op")
DPO = Principal("clinic-a", Role.DPO, "dpo")


def clinician(tenant: str = "clinic-a") -> Principal:
    return Principal(tenant, Role.CLINICIAN, "alice")


async def body_of(data: bytes):
    yield data


async def store(vault: Vault, data: bytes, tenant: str = "clinic-a", **meta) -> str:
    metadata = parse_metadata(sample_metadata(**meta))
    return (await vault.create_image(clinician(tenant), metadata, "image/jpeg", body_of(data))).id


async def read(vault: Vault, record_id: str, tenant: str = "clinic-a") -> bytes:
    handle = await vault.open_image(clinician(tenant), record_id)
    return b"".join([piece async for piece in handle.stream()])


async def timeline(vault: Vault, patient_id: str, tenant: str = "clinic-a") -> list[str]:
    page = await vault.search(clinician(tenant), SearchQuery(patient_id=patient_id, limit=200))
    return sorted(r.id for r in page.items)


def tenant_doc(vault: Vault, tenant: str) -> dict:
    return vault.index.read(lambda t: t.get_doc(schema.DB_TENANTS, tenant.encode()))


async def test_epoch_rekeys_everything_live_and_keeps_every_record(service):
    kept: dict[str, tuple[str, str, bytes]] = {}
    for n in range(12):
        patient = PATIENT_IDS[n % 2]
        tenant = "clinic-a" if n % 3 else "clinic-b"
        data = random_image(3000 + n, n)
        kept[await store(service, data, tenant, patient_id=patient)] = (tenant, patient, data)
    erased = [await store(service, jpeg(b"erase me"), patient_id=PATIENT_IDS[2]) for _ in range(3)]
    await service.erase_patient(DPO, ErasureRequest(PATIENT_IDS[2], "Art. 17", override_retention=True))
    before = {t: tenant_doc(service, t)["index_key"] for t in ("clinic-a", "clinic-b")}
    hmacs_before = {rid: service.index.read(lambda t, r=rid: t.get_record(decode_id(r))).patient_hmac for rid in kept}
    status = service.key_admin.epoch_status()
    assert status.waiting == 3 and status.due and status.last_number == 0

    state = await service.run_epoch(OPERATOR)

    assert state.state == "done" and state.number == 1 and state.target_version == 2
    report = await service.key_report(OPERATOR)
    assert report.status.versions == (2,) and set(report.dek_counts) == {2} and set(report.tenant_key_counts) == {2}
    for tenant in ("clinic-a", "clinic-b"):
        doc = tenant_doc(service, tenant)
        assert doc["index_key"] != before[tenant] and "next_index_key" not in doc
        with pytest.raises(KeyMaterialError):  # the old index key died with KEK version 1
            await service.keys.unwrap_data_key(before[tenant])
    for rid, (tenant, patient, data) in kept.items():
        assert await read(service, rid, tenant) == data
        assert service.index.read(lambda t, r=rid: t.get_record(decode_id(r))).patient_hmac != hmacs_before[rid]
    for tenant in ("clinic-a", "clinic-b"):
        for patient in PATIENT_IDS[:2]:
            expected = sorted(r for r, (t, p, _) in kept.items() if t == tenant and p == patient)
            assert await timeline(service, patient, tenant) == expected
    assert await timeline(service, PATIENT_IDS[2]) == []
    after = service.key_admin.epoch_status()
    assert after.waiting == 0 and not after.due and after.last_number == 1
    assert set(erased).isdisjoint(kept)
    actions = [(e.event.action, e.event.outcome) for e in service.audit.page(0, 10_000).entries]
    assert ("key_epoch", "ok") in actions


async def test_an_interrupted_epoch_resumes_and_searches_work_in_between(config):
    vault = await open_vault(config)
    ids = [await store(vault, random_image(2000, n), patient_id=PATIENT_IDS[n % 2]) for n in range(8)]
    await vault.key_admin.begin_epoch()
    await vault.key_admin._replace_tenant_keys()  # noqa: SLF001 - stop between two phases, as a kill would
    await vault.close()

    vault = await open_vault(config)
    try:
        assert "next_index_key" in tenant_doc(vault, "clinic-a")
        # Mid-epoch: new records are written under the new key, old ones found under the old.
        late = await store(vault, jpeg(b"written mid-epoch"), patient_id=PATIENT_IDS[0])
        assert await timeline(vault, PATIENT_IDS[0]) == sorted([*ids[0::2], late])
        state = await vault.run_epoch(OPERATOR)
        assert state.state == "done" and state.number == 1
        assert await timeline(vault, PATIENT_IDS[0]) == sorted([*ids[0::2], late])
        assert await timeline(vault, PATIENT_IDS[1]) == sorted(ids[1::2])
        for n, rid in enumerate(ids):
            assert await read(vault, rid) == random_image(2000, n)
    finally:
        await vault.close()


async def test_uploads_racing_an_epoch_are_all_kept(service):
    acknowledged: dict[str, bytes] = {}

    async def uploader(seed: int) -> None:
        for n in range(15):
            data = random_image(1500 + n, seed * 100 + n)
            acknowledged[await store(service, data, patient_id=PATIENT_IDS[seed % 3])] = data
            await asyncio.sleep(0)

    await store(service, jpeg(b"first"), patient_id=PATIENT_IDS[0])
    results = await asyncio.gather(service.run_epoch(OPERATOR), *(uploader(s) for s in range(4)))
    assert results[0].state == "done"
    for rid, data in acknowledged.items():
        assert await read(service, rid) == data
    found = set()
    for patient in PATIENT_IDS:
        found.update(await timeline(service, patient))
    assert set(acknowledged) <= found


async def test_an_upload_wrapped_before_retirement_is_rewrapped_at_commit(service):
    gate = asyncio.Event()
    started = asyncio.Event()

    async def slow_body():
        yield jpeg(b"part one ")
        started.set()
        await gate.wait()
        yield b"part two"

    metadata = parse_metadata(sample_metadata())
    upload = asyncio.ensure_future(service.create_image(clinician(), metadata, "image/jpeg", slow_body()))
    await started.wait()
    await service.rotate_keys(OPERATOR, background=False)
    await service.rewrap_keys(OPERATOR)
    await service.retire_keys(OPERATOR)  # the upload's DEK is still wrapped under version 1
    gate.set()
    record = await upload
    assert record.key_version == 2
    wrapped = service.index.read(lambda t: t.get_dek(decode_id(record.id)))
    assert key_version_of(wrapped) == 2
    service.dek_cache.clear()
    assert await read(service, record.id) == jpeg(b"part one ") + b"part two"


async def test_one_unreadable_record_does_not_fail_a_search_page(service):
    good = [await store(service, random_image(100, n)) for n in range(3)]
    bad = await store(service, jpeg(b"damaged key"))
    rid = decode_id(bad)
    wrapped = service.index.read(lambda t: t.get_dek(rid))
    prefix, _, payload = wrapped.rpartition(":")
    damaged = prefix + ":" + ("A" if payload[0] != "A" else "B") + payload[1:]
    await service.index.write(lambda t: t.put_dek(rid, damaged))
    service.dek_cache.clear()
    page = await service.search(clinician(), SearchQuery(patient_id=PATIENT_IDS[0], limit=50))
    assert sorted(r.id for r in page.items) == sorted(good)
    assert page.unreadable == (bad,)
    assert page.to_json(include_personal=True)["unreadable"] == [{"id": bad, "code": "key_error"}]
    assert service.metrics.registry.get_sample_value("imagevault_unreadable_records_total") == 1.0


async def test_a_patient_whose_hmac_begins_with_0xff_moves_too(service):
    await store(service, jpeg(b"tenant exists"))
    index_key = await service.context.tenant_keys.get("clinic-a")
    scheme = await service.context.tenant_keys.scheme("clinic-a", service.config)
    patient = next(f"PT-{n}" for n in range(100_000)
                   if patient_ids.patient_hmac(index_key, scheme, f"PT-{n}")[0] == 0xFF)
    rid = await store(service, jpeg(b"edge of the key space"), patient_id=patient)
    await service.run_epoch(OPERATOR)
    assert await timeline(service, patient) == [rid]


async def test_the_http_epoch_starts_once_and_runs_in_the_background(api, service):
    await store(service, jpeg(b"something to re-key"))
    headers = await api.headers("admin")
    first = await api.client.post("/v1/admin/keys/epoch", headers=headers)
    second = await api.client.post("/v1/admin/keys/epoch", headers=headers)
    assert first.status == second.status == 202
    assert (await first.json())["shred_epoch"]["number"] == (await second.json())["shred_epoch"]["number"] == 1
    for _ in range(200):
        report = await (await api.client.get("/v1/admin/keys", headers=headers)).json()
        if report["shred_epoch"]["job"]["state"] == "done":
            break
        await asyncio.sleep(0.02)
    assert report["shred_epoch"]["last_number"] == 1 and report["versions"] == [2]
    refused = await api.client.post("/v1/admin/keys/epoch", headers=await api.headers("clinician"))
    assert refused.status == 403


async def test_the_epoch_switches_a_tenant_to_its_configured_patient_id_scheme(config):
    legacy = config.with_overrides(patient_id_scheme="legacy")
    vault = await open_vault(legacy)
    try:
        spaced = await store(vault, jpeg(b"spaced"), patient_id="943 476 5919")
        assert await timeline(vault, "9434765919") == [spaced]  # legacy folds spaces away
    finally:
        await vault.close()
    vault = await open_vault(config.with_overrides(patient_id_scheme="exact"))
    try:
        assert await vault.context.tenant_keys.scheme("clinic-a", vault.config) == "legacy"  # pending, not silent
        await vault.run_epoch(OPERATOR)
        assert tenant_doc(vault, "clinic-a")["patient_id_scheme"] == "exact"
        assert await timeline(vault, "943 476 5919") == [spaced]
        assert await timeline(vault, "9434765919") == []
        compact = await store(vault, jpeg(b"compact"), patient_id="9434765919")
        assert await timeline(vault, "9434765919") == [compact]
    finally:
        await vault.close()
