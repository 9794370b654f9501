"""The audit trail over HTTP: every operation leaves one entry; auditors read and verify it."""

from __future__ import annotations

import json

import pytest

from tests.api.test_privacy import DESCRIPTION, DIAGNOSIS, needles
from tests.conftest import PATIENT_IDS, files_under, jpeg, random_image, sample_metadata

P0 = PATIENT_IDS[0]


async def all_entries(api, tenant="clinic-a", role="auditor"):
    headers = await api.headers(role, tenant=tenant)
    entries, after = [], 0
    while after is not None:
        response = await api.client.get(f"/v1/audit?after={after}&limit=1000", headers=headers)
        assert response.status == 200
        page = await response.json()
        entries += page["entries"]
        after = page["next_after"]
    return entries


async def every_operation(api):
    """One of each operation, with personal data everywhere a client could put it."""
    clinician, dpo = await api.headers(), await api.headers("dpo")
    meta = sample_metadata(description=DESCRIPTION, diagnosis=DIAGNOSIS, consent={"research": True},
                           retention={"class": "until", "until": "2020-01-01"})
    first = await api.upload(jpeg(b"one"), meta, role="dpo")  # an expired retention date: the dpo's to set
    second = await api.upload(jpeg(b"two"), sample_metadata(patient_id=PATIENT_IDS[1], description=DESCRIPTION))
    await api.client.get(f"/v1/images/{first['id']}/metadata", headers=clinician)
    await api.client.get(f"/v1/images/{first['id']}", headers=clinician)
    await api.client.get(f"/v1/images/{first['id']}", headers=await api.headers("researcher"))
    await api.client.post("/v1/search", json={"patient_id": P0, "modality": "dermoscopic"}, headers=clinician)
    await api.client.patch(f"/v1/images/{first['id']}/metadata", json={"diagnosis": DIAGNOSIS + "!", "consent": {"teaching": True}}, headers=clinician)
    await api.client.patch(f"/v1/images/{first['id']}/metadata", json={"patient_id": PATIENT_IDS[2]}, headers=clinician)  # 403
    await api.client.post("/v1/patients/legal-hold", json={"patient_id": PATIENT_IDS[2], "hold": True, "reason": f"court order for {P0}"}, headers=dpo)
    await api.client.post("/v1/patients/legal-hold", json={"patient_id": PATIENT_IDS[2], "hold": False, "reason": "lifted"}, headers=dpo)
    await api.client.post("/v1/patients/export", json={"patient_id": PATIENT_IDS[1]}, headers=dpo)
    await api.client.delete(f"/v1/images/{first['id']}?reason=patient+{P0.replace(' ', '+')}+asked", headers=clinician)
    await api.client.post("/v1/patients/erase", json={"patient_id": PATIENT_IDS[1], "reason": f"erase {PATIENT_IDS[1]}", "override_retention": True}, headers=dpo)
    await api.client.post("/v1/admin/retention/sweep", headers=await api.headers("operator"))
    await api.client.get("/v1/admin/keys", headers=await api.headers("admin"))
    return first, second


async def test_every_operation_appends_one_entry_with_actor_outcome_and_record_ids(api):
    first, second = await every_operation(api)
    entries = await all_entries(api, role="admin")
    seen = [(e["action"], e["outcome"]) for e in entries]
    for expected in [
        ("token_create", "ok"), ("create", "ok"), ("read", "ok"), ("search", "ok"), ("update", "ok"),
        ("update", "forbidden"), ("legal_hold", "ok"), ("export", "ok"), ("delete", "ok"), ("erase", "ok"),
        ("retention_sweep", "ok"), ("key_status", "ok"),
    ]:
        assert expected in seen, expected
    reads = [e for e in entries if e["action"] == "read"]
    assert {(e["actor"]["role"], tuple(e["record_ids"])) for e in reads} == {
        ("clinician", (first["id"],)), ("researcher", (first["id"],)),
    }
    search = next(e for e in entries if e["action"] == "search")
    assert search["details"] == {"filters": ["patient_id", "modality"]} and search["record_ids"] == [first["id"]]
    (erase,) = [e for e in entries if e["action"] == "erase"]
    assert erase["record_ids"] == [second["id"]] and erase["actor"] == {"name": erase["actor"]["name"], "role": "dpo", "tenant": "clinic-a",
                                                                       "via": "token", "on_behalf_of": None}
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    for earlier, later in zip(entries, entries[1:]):
        if later["seq"] == earlier["seq"] + 1:
            assert later["prev_hash"] == earlier["hash"]


async def test_no_patient_identifier_in_any_file_of_the_audit_environment(api, service):
    await every_operation(api)
    await api.client.get("/v1/audit/verify", headers=await api.headers("auditor"))
    files = files_under(service.config.audit_dir)
    assert {p.name for p in files} == {"data.mdb", "lock.mdb"}
    found = [(p.name, n) for p in files for n in needles() if n in p.read_bytes()]
    assert found == []


async def test_auditors_see_their_tenant_only_and_admins_every_scope(api):
    await api.upload(jpeg(b"a"), sample_metadata())
    await api.upload(jpeg(b"b"), sample_metadata(), tenant="clinic-b")
    await api.client.get("/v1/admin/keys", headers=await api.headers("admin"))
    await api.client.get("/v1/admin/keys", headers=await api.headers("operator", tenant="clinic-b"))  # 403
    await api.client.get("/v1/admin/stats", headers=await api.headers("operator", tenant="clinic-b"))
    mine = await all_entries(api, "clinic-a")
    theirs = await all_entries(api, "clinic-b")
    everything = await all_entries(api, role="admin")
    assert {e["tenant"] for e in mine} == {"clinic-a"}
    assert {e["tenant"] for e in theirs} == {"clinic-b"}
    assert any(e["action"] == "create" for e in mine) and any(e["action"] == "create" for e in theirs)
    # Key events are global, the admin's alone; the refused attempt and the stats are clinic-b's.
    assert not any(e["action"] == "key_status" for e in mine)
    assert [(e["action"], e["outcome"]) for e in theirs if e["action"] in ("key_status", "stats")] == [
        ("key_status", "forbidden"), ("stats", "ok"),
    ]
    assert ("key_status", "ok", "-") in {(e["action"], e["outcome"], e["tenant"]) for e in everything}
    assert {e["seq"] for e in mine} | {e["seq"] for e in theirs} < {e["seq"] for e in everything}
    assert not {e["seq"] for e in mine} & {e["seq"] for e in theirs}


async def test_verify_reports_the_head_and_then_the_first_bad_entry(api, service):
    await api.upload(jpeg(b"a"), sample_metadata(lesion_id="L-MARKER-Q"))
    auditor = await api.headers("auditor")
    result = await (await api.client.get("/v1/audit/verify", headers=auditor)).json()
    assert result["ok"] is True and result["entries"] >= 2
    (last_verified,) = service.audit.page(result["entries"] - 1, 1).entries  # verify itself appends after
    assert last_verified.seq == result["entries"] and result["head"] == last_verified.hash.hex()

    # The create entry names the record; flip a byte of that id wherever it sits on disk.
    create = next(e for e in service.audit.page(0, 100).entries if e.event.action == "create")
    raw_id = create.event.record_ids[0]
    data_file = service.config.audit_dir / "data.mdb"
    raw = bytearray(data_file.read_bytes())
    pos = raw.find(raw_id)
    while pos >= 0:
        raw[pos] ^= 0x80
        pos = raw.find(raw_id, pos + 1)
    data_file.write_bytes(bytes(raw))
    result = await (await api.client.get("/v1/audit/verify", headers=auditor)).json()
    assert result["ok"] is False and result["bad_seq"] == create.seq


async def test_an_integrity_failure_on_download_is_audited(api, service):
    record = await api.upload(random_image(200_000, seed=9))
    path = service.config.blobs_dir / record["id"][-2:].lower() / f"{record['id']}.ivb"
    blob = bytearray(path.read_bytes())
    blob[500] ^= 1
    path.write_bytes(bytes(blob))
    response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
    assert response.status == 500
    failures = [e for e in await all_entries(api) if e["action"] == "integrity_failure"]
    assert [(f["record_ids"], f["outcome"]) for f in failures] == [([record["id"]], "integrity_error")]


@pytest.mark.parametrize("query", ["after=-1", "after=abc", "limit=0", "limit=1001", "limit=1.5", "after=99999999999999999999"])
async def test_bad_audit_paging_parameters_are_400(api, query):
    response = await api.client.get(f"/v1/audit?{query}", headers=await api.headers("auditor"))
    body = await response.json()
    assert response.status == 400 and body["error"]["code"] == "invalid_request", body


async def test_audit_entries_are_json_with_the_documented_fields(api):
    await api.upload(jpeg(b"x"))
    entry = (await all_entries(api))[-1]
    assert set(entry) == {"seq", "time", "tenant", "actor", "action", "record_ids", "outcome", "details", "prev_hash", "hash"}
    assert len(entry["hash"]) == len(entry["prev_hash"]) == 64
    json.dumps(entry)


async def test_concurrent_searches_are_each_audited_and_share_audit_commits(api, service):
    """Each search waits for its own durable entry; searches waiting together share one commit
    (the audit writer is held on a gate while they queue, so the grouping is deterministic)."""
    import asyncio
    import threading

    from vault.auth import Principal, Role
    from vault.search import SearchQuery

    records = [await api.upload(jpeg(f"image {i}".encode()), sample_metadata(patient_id=PATIENT_IDS[i % 2])) for i in range(6)]
    clinician = Principal("clinic-a", Role.CLINICIAN, "searcher")
    before_entries = len(await all_entries(api))
    entered, gate = threading.Event(), threading.Event()

    def hold(txn):  # runs on the writer thread: keeps it busy until the gate opens
        entered.set()
        gate.wait(10)

    held = service.audit._index.submit(hold)
    assert entered.wait(10)
    commits = service.audit._index.commits
    tasks = [asyncio.ensure_future(service.search(clinician, SearchQuery(patient_id=PATIENT_IDS[i % 2]))) for i in range(16)]
    for _ in range(1000):  # each search reads on a reader thread, then queues its audit append
        if service.audit._index.pending_writes >= 16:
            break
        await asyncio.sleep(0.01)
    assert service.audit._index.pending_writes == 16  # every search queued behind the gate
    assert not any(task.done() for task in tasks)  # none is answered before its entry is durable
    gate.set()
    pages = await asyncio.gather(*tasks)
    held.result()
    assert service.audit._index.commits - commits == 2  # the gate's commit, then all 16 entries
    entries = (await all_entries(api))[before_entries:]
    searches = [e for e in entries if e["action"] == "search" and e["actor"]["name"] == "searcher"]
    assert len(searches) == 16
    expected = {PATIENT_IDS[0]: {r["id"] for r in records[0::2]}, PATIENT_IDS[1]: {r["id"] for r in records[1::2]}}
    assert all({r.id for r in page.items} == expected[PATIENT_IDS[i % 2]] for i, page in enumerate(pages))
    assert sorted(sorted(e["record_ids"]) for e in searches) == sorted(sorted(r.id for r in p.items) for p in pages)
