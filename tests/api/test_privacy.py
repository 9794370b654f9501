"""Nothing personal in the clear: not on disk, not in logs, not in metrics, not in error messages."""

from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import PATIENT_IDS, STORES, files_under, jpeg, sample_metadata
from tests.infra.blobs import open_raw_blobs

DESCRIPTION = "mole behind the left ear, patient anxious ZQXJ-DESC"
DIAGNOSIS = "nodular melanoma ZQXJ-DIAG"


@pytest.fixture(params=STORES)
def store(request):
    """Every test here runs on the filesystem and on S3 (SeaweedFS)."""
    return request.param


def needles() -> list[bytes]:
    out = []
    for secret in (*PATIENT_IDS, DESCRIPTION, DIAGNOSIS, "ZQXJ"):
        out.append(secret.encode())
        out.append(secret.encode("utf-16-le"))
        out.append(secret.replace(" ", "").encode())
    return out


async def run_scenario(api):
    ids = []
    for n, patient in enumerate(PATIENT_IDS):
        record = await api.upload(
            jpeg(f"pixels {n}".encode()),
            sample_metadata(patient_id=patient, description=DESCRIPTION, diagnosis=DIAGNOSIS,
                            retention={"class": "until", "until": "2020-01-01"}),
            role="dpo",  # a retention date already past is the dpo's to set
        )
        ids.append(record["id"])
    headers = await api.headers()
    for patient in PATIENT_IDS:
        await api.client.post("/v1/search", json={"patient_id": patient}, headers=headers)
    await api.client.patch(f"/v1/images/{ids[0]}/metadata", json={"diagnosis": DIAGNOSIS + " confirmed"}, headers=headers)
    await api.client.patch(f"/v1/images/{ids[1]}/metadata", json={"patient_id": PATIENT_IDS[2]}, headers=await api.headers("dpo"))
    await api.client.get(f"/v1/images/{ids[2]}", headers=headers)
    await api.client.delete(f"/v1/images/{ids[2]}", headers=headers)
    # Bad requests that carry personal data must not echo it back or log it.
    bad = []
    bad.append(await api.upload(jpeg(b"x"), sample_metadata(patient_id=PATIENT_IDS[0], captured_at=PATIENT_IDS[0]), expect=None))
    bad.append(await api.upload(jpeg(b"x"), sample_metadata(patient_id=PATIENT_IDS[1], modality=PATIENT_IDS[1]), expect=None))
    bad.append(await api.upload(jpeg(b"x"), {**sample_metadata(), PATIENT_IDS[2]: 1}, expect=None))
    response = await api.client.post("/v1/search", json={"patient_id": PATIENT_IDS[0], "modality": PATIENT_IDS[0]}, headers=headers)
    bad.append((response.status, await response.json()))
    return ids, bad


async def test_no_personal_data_in_any_file_under_the_data_directory_or_object_in_the_bucket(api, service):
    await run_scenario(api)
    service.index.read(lambda t: None)
    stored = [(str(path), path.read_bytes()) for path in files_under(service.config.data_dir)]
    async with open_raw_blobs(service.config) as raw:
        # On S3: every object's key, metadata and body; on fs the blob files again.
        stored += await raw.everything()
    assert any(name.endswith(".ivb") or name.startswith("blobs/") for name, _ in stored)
    found = []
    for name, content in stored:
        for needle in needles():
            if needle in content:
                found.append((name, needle))
    assert found == []


async def test_no_personal_data_in_logs_metrics_or_error_messages(api, service, caplog):
    caplog.set_level(logging.DEBUG)
    _, bad = await run_scenario(api)
    for status, body in bad:
        assert status == 400
        text = json.dumps(body)
        for secret in PATIENT_IDS:
            assert secret not in text
    metrics = (await (await api.client.get("/metrics")).read())
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records).encode()
    for needle in needles():
        assert needle not in metrics
        assert needle not in logs


async def test_patient_identifiers_never_appear_in_urls_of_the_api(api):
    spec = await (await api.client.get("/openapi.json")).json()
    for path, item in spec["paths"].items():
        # The literal collection /v1/patients/<verb> (docs/api.md) names no patient; nothing else may.
        assert "patient" not in path.replace("/v1/patients/", "/v1/<collection>/")
        assert "{" not in path or not path.startswith("/v1/patients/")
        for operation in item.values():
            if isinstance(operation, dict):
                for parameter in operation.get("parameters", []):
                    assert "patient" not in parameter["name"]
