"""/v1/patients/*: erasure of a whole patient, legal hold, subject access export."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import zipfile

import aiohttp
import pytest

from tests.conftest import (
    INDEXES,
    PATIENT_IDS,
    create_many,
    files_under,
    jpeg,
    random_image,
    sample_metadata,
)
from vault.audit.hooks import reason_mac
from vault.export import member_names
from vault.ids import decode_id
from vault.index import schema

EXPIRED = {"class": "until", "until": "2020-01-01"}  # the dpo's to set at upload
P0, P1 = PATIENT_IDS[0], PATIENT_IDS[1]


@pytest.fixture(params=INDEXES)
def index_engine(request):
    """The record core runs on both index engines (postgres with the fs store only)."""
    return request.param


async def audit_entries(api, action):
    entries, after = [], 0
    while after is not None:
        page = await (await api.client.get(f"/v1/audit?after={after}&limit=1000", headers=await api.headers("auditor"))).json()
        entries += page["entries"]
        after = page["next_after"]
    return [e for e in entries if e["action"] == action]


def index_keys_naming(service, raw_ids):
    """Every key in the index (but the shred log) that contains one of the record ids."""
    wanted = set(raw_ids)

    def scan(txn):
        found = []
        for db in schema.ALL_DBS:
            if db == schema.DB_SHREDLOG:
                continue
            for key in txn.scan_keys(db, b"", b"\xff" * 300):
                if key[-16:] in wanted or key[:16] in wanted:
                    found.append((db, key))
        return found

    return service.index.read(scan)


async def test_erasing_a_patient_with_a_thousand_records_leaves_nothing_readable(api, service):
    ids = await create_many(service, 1000, sample_metadata(patient_id=P0))
    survivor = await api.upload(jpeg(b"another patient"), sample_metadata(patient_id=P1))
    response = await api.client.post(
        "/v1/patients/erase",
        json={"patient_id": P0, "reason": "Art. 17 request ZQ-REASON", "override_retention": True},
        headers=await api.headers("dpo"),
    )
    body = await response.json()
    assert response.status == 200, body
    assert body["shredded"] == 1000 and body["refused"] == []
    assert 0 < body["seconds"] < 10  # the benchmark measures it properly (goal: under 1 s)

    headers = await api.headers()
    for start in range(0, 1000, 100):
        statuses = await asyncio.gather(*(
            api.client.get(f"/v1/images/{rid}", headers=headers) for rid in ids[start:start + 100]
        ))
        assert {r.status for r in statuses} == {404}
    names = {p.name for p in files_under(service.config.blobs_dir)}
    assert not {f"{rid}.ivb" for rid in ids} & names
    assert index_keys_naming(service, [decode_id(rid) for rid in ids]) == []
    found = await (await api.client.post("/v1/search", json={"patient_id": P0}, headers=headers)).json()
    assert found["items"] == []
    assert (await api.client.get(f"/v1/images/{survivor['id']}", headers=headers)).status == 200

    (erase,) = await audit_entries(api, "erase")
    assert sorted(erase["record_ids"]) == sorted(ids)
    assert erase["actor"]["role"] == "dpo" and erase["outcome"] == "ok"
    index_key = await service.context.tenant_keys.get("clinic-a")
    assert erase["details"]["reason_hmac"] == reason_mac(index_key, "Art. 17 request ZQ-REASON")
    assert erase["details"]["reason_hmac"] != hashlib.sha256(b"Art. 17 request ZQ-REASON").hexdigest()
    assert "ZQ-REASON" not in json.dumps(erase)


async def test_erasure_refuses_retained_records_unless_overridden_and_held_ones_always(api):
    retained = await api.upload(jpeg(b"medical"))  # ten years from capture
    expired = await api.upload(jpeg(b"expired"), sample_metadata(retention=EXPIRED), role="dpo")
    held = await api.upload(jpeg(b"held"), sample_metadata(retention=EXPIRED, legal_hold=True), role="dpo")
    dpo = await api.headers("dpo")

    response = await api.client.post("/v1/patients/erase", json={"patient_id": P0, "reason": "request"}, headers=dpo)
    body = await response.json()
    assert body["shredded"] == 1
    assert sorted(body["refused"], key=lambda r: r["id"]) == sorted(
        [{"id": retained["id"], "code": "retention_obligation"}, {"id": held["id"], "code": "legal_hold"}],
        key=lambda r: r["id"],
    )
    assert (await api.client.get(f"/v1/images/{expired['id']}", headers=dpo)).status == 404

    response = await api.client.post(
        "/v1/patients/erase", json={"patient_id": P0, "reason": "request", "override_retention": True}, headers=dpo,
    )
    body = await response.json()
    assert body["shredded"] == 1 and body["refused"] == [{"id": held["id"], "code": "legal_hold"}]
    assert (await api.client.get(f"/v1/images/{held['id']}", headers=dpo)).status == 200


async def test_patient_legal_hold_blocks_erasure_and_sweep_until_lifted(api, service):
    ids = [(await api.upload(jpeg(b"%d" % n), sample_metadata(retention=EXPIRED), role="dpo"))["id"] for n in range(3)]
    other = await api.upload(jpeg(b"other"), sample_metadata(patient_id=P1, retention=EXPIRED), role="dpo")
    dpo, operator = await api.headers("dpo"), await api.headers("operator")
    hold = {"patient_id": P0, "hold": True, "reason": "litigation ZQ-HOLD"}

    assert await (await api.client.post("/v1/patients/legal-hold", json=hold, headers=dpo)).json() == {"updated": 3}
    assert await (await api.client.post("/v1/patients/legal-hold", json=hold, headers=dpo)).json() == {"updated": 0}
    erase = await (await api.client.post(
        "/v1/patients/erase", json={"patient_id": P0, "reason": "r", "override_retention": True}, headers=dpo,
    )).json()
    assert erase["shredded"] == 0 and {r["code"] for r in erase["refused"]} == {"legal_hold"}
    sweep = await (await api.client.post("/v1/admin/retention/sweep", headers=operator)).json()
    assert sweep == {"due": 4, "shredded": 1, "held": 3}  # the other patient's record went
    assert (await api.client.get(f"/v1/images/{other['id']}", headers=dpo)).status == 404
    for rid in ids:
        assert (await api.client.get(f"/v1/images/{rid}", headers=dpo)).status == 200

    lift = {**hold, "hold": False}
    assert await (await api.client.post("/v1/patients/legal-hold", json=lift, headers=dpo)).json() == {"updated": 3}
    sweep = await (await api.client.post("/v1/admin/retention/sweep", headers=operator)).json()
    assert sweep == {"due": 3, "shredded": 3, "held": 0}
    holds = await audit_entries(api, "legal_hold")
    assert [h["details"]["hold"] for h in holds] == [True, True, False]
    assert sorted(holds[0]["record_ids"]) == sorted(ids) and holds[1]["record_ids"] == []


async def test_export_is_a_zip_whose_every_file_matches_its_manifest_digest(api):
    images = {
        "a": (random_image(3 * 1024 * 1024 + 17, seed=1), "image/jpeg"),
        "b": (random_image(70_000, seed=2, content_type="image/png"), "image/png"),
        "c": (random_image(8, seed=3, content_type="image/tiff"), "image/tiff"),  # a TIFF header alone
    }
    ids = {}
    for key, (data, content_type) in images.items():
        record = await api.upload(data, sample_metadata(lesion_id=f"L-{key}"), content_type=content_type)
        ids[record["id"]] = data
    await api.upload(jpeg(b"someone else"), sample_metadata(patient_id=P1))
    response = await api.client.post("/v1/patients/export", json={"patient_id": P0}, headers=await api.headers("dpo"))
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert response.headers.get("Transfer-Encoding") == "chunked"  # streamed, length unknown up front
    archive = zipfile.ZipFile(io.BytesIO(await response.read()))
    assert archive.testzip() is None
    manifest = json.loads(archive.read("manifest.json"))
    assert len(manifest["files"]) == 3 and manifest["tenant"] == "clinic-a"
    for entry in manifest["files"]:
        content = archive.read(entry["file"])
        assert hashlib.sha256(content).hexdigest() == entry["sha256"] == entry["record"]["sha256"]
        assert content == ids[entry["record"]["id"]]
        assert entry["file"] == f"{entry['record']['display_name']}.{ {'image/jpeg': 'jpg', 'image/png': 'png', 'image/tiff': 'tif'}[entry['record']['content_type']] }"
        assert entry["record"]["patient_id"] == P0  # the data subject's own copy
    assert sorted(archive.namelist()) == sorted([e["file"] for e in manifest["files"]] + ["manifest.json"])
    (export,) = await audit_entries(api, "export")
    assert sorted(export["record_ids"]) == sorted(ids)


def test_export_member_names_are_unique_even_for_equal_display_names():
    from dataclasses import replace

    from vault.metadata import Metadata, Record

    meta = Metadata(patient_id="x", captured_at="2026-01-01T00:00:00Z", modality="clinical", body_site="arm")
    base = Record("0" * 20 + "ABCDEF", "t", meta, "image/jpeg", 0, "0" * 64, "", "", None, 1)
    twins = [base, replace(base, id="1" * 20 + "ABCDEF"), replace(base, id="2" * 20 + "ABCDEF")]
    assert member_names(twins) == [
        "IMG-ABCDEF_arm_clinical.jpg", "IMG-ABCDEF_arm_clinical-2.jpg", "IMG-ABCDEF_arm_clinical-3.jpg",
    ]


async def test_a_blob_failing_integrity_mid_export_aborts_the_transfer(api, service):
    first = await api.upload(random_image(2 * 1024 * 1024, seed=3), sample_metadata(captured_at="2026-01-01T00:00:00Z"))
    second = await api.upload(random_image(300_000, seed=4), sample_metadata(captured_at="2026-02-01T00:00:00Z"))
    path = service.config.blobs_dir / second["id"][-2:].lower() / f"{second['id']}.ivb"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    response = await api.client.post("/v1/patients/export", json={"patient_id": P0}, headers=await api.headers("dpo"))
    assert response.status == 200  # the first member was already on its way
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    (failure,) = await audit_entries(api, "integrity_failure")
    assert failure["record_ids"] == [second["id"]] and failure["outcome"] == "integrity_error"
    assert first["id"]


@pytest.mark.parametrize(
    "path, body, status, code",
    [
        ("/v1/patients/erase", {"patient_id": P0}, 400, "invalid_request"),
        ("/v1/patients/erase", {"patient_id": P0, "reason": ""}, 400, "invalid_request"),
        ("/v1/patients/erase", {"patient_id": P0, "reason": "r", "override_retention": "yes"}, 400, "invalid_request"),
        ("/v1/patients/erase", {"patient_id": 9434765919, "reason": "r"}, 400, "invalid_request"),
        ("/v1/patients/erase", {"patient_id": P0, "reason": "r", "everything": True}, 400, "unknown_field"),
        ("/v1/patients/erase", {"patient_id": P0, "reason": "r" * 1025}, 400, "invalid_request"),
        ("/v1/patients/erase", [P0], 400, "invalid_request"),
        ("/v1/patients/legal-hold", {"patient_id": P0, "reason": "r"}, 400, "invalid_request"),
        ("/v1/patients/legal-hold", {"patient_id": P0, "hold": 1, "reason": "r"}, 400, "invalid_request"),
        ("/v1/patients/legal-hold", {"patient_id": P0, "hold": True}, 400, "invalid_request"),
        ("/v1/patients/export", {}, 400, "invalid_request"),
        ("/v1/patients/export", {"patient_id": P0, P1: 1}, 400, "unknown_field"),
        ("/v1/patients/export", {"patient_id": "x\u0000y"}, 400, "invalid_request"),
    ],
)
async def test_malformed_patient_requests_are_400_and_change_nothing(api, path, body, status, code):
    record = await api.upload(jpeg(b"img"), sample_metadata(retention=EXPIRED), role="dpo")
    response = await api.client.post(path, json=body, headers=await api.headers("dpo"))
    payload = await response.json()
    assert response.status == status and payload["error"]["code"] == code, payload
    for secret in PATIENT_IDS:
        assert secret not in json.dumps(payload)
    metadata = await (await api.client.get(f"/v1/images/{record['id']}/metadata", headers=await api.headers())).json()
    assert metadata["legal_hold"] is False


async def test_patient_requests_that_are_not_json_get_400_or_415(api):
    dpo = await api.headers("dpo")
    response = await api.client.post("/v1/patients/erase", data=b"{not json", headers={**dpo, "Content-Type": "application/json"})
    assert response.status == 400
    response = await api.client.post("/v1/patients/export", data=b"patient_id=1", headers={**dpo, "Content-Type": "text/plain"})
    assert response.status == 415
    response = await api.client.post("/v1/patients/erase", headers=dpo)
    assert response.status == 400
