"""Upload-time policy = patch-time policy: what only the DPO may change later (a legal hold, a
retention that ends sooner than the medical default), only the DPO may set at upload."""

from __future__ import annotations

import json

import pytest

from tests.api.test_bad_input import raw_multipart, stored_blobs
from tests.conftest import jpeg, make_config, sample_metadata

# clinic-b keeps medical records 15 years, clinic-a the default 10: from the sample's capture
# (2026-11-20T10:15Z) clinic-a's default ends 2036-11-20T10:15Z, clinic-b's 2041-11-20T10:15Z.
MEDICAL_BY_TENANT = "clinic-b=15"


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path / "data", medical_retention_by_tenant=MEDICAL_BY_TENANT)


def until(date):
    return {"class": "until", "until": date}


async def refusals(service):
    return [e.event for e in service.audit.page(0, 1000).entries
            if e.event.action == "create" and e.event.outcome == "forbidden"]


async def test_a_legal_hold_at_upload_needs_the_dpo(api, service):
    status, body = await api.upload(jpeg(b"held"), sample_metadata(legal_hold=True), expect=None)
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert service.count_records() == 0 and await stored_blobs(service) == []
    (refused,) = await refusals(service)
    assert refused.actor.role == "clinician" and "943" not in json.dumps(refused.details)

    assert (await api.upload(jpeg(b"not held"), sample_metadata(legal_hold=False)))["legal_hold"] is False
    assert (await api.upload(jpeg(b"held"), sample_metadata(legal_hold=True), role="dpo"))["legal_hold"] is True


@pytest.mark.parametrize("retention, captured_at, tenant, clinician_may", [
    (until("2031-05-01"), None, "clinic-a", False),  # sooner than ten years
    (until("2036-11-20"), None, "clinic-a", False),  # midnight: still 10 h 15 min sooner
    (until("2036-11-21"), None, "clinic-a", True),  # later than the medical default
    (until("2099-01-01"), None, "clinic-a", True),
    (until("2038-01-01"), None, "clinic-b", False),  # later than clinic-a's default, not clinic-b's
    (until("2020-01-01"), None, "clinic-a", False),  # already past
    (until("2005-01-01"), "1990-01-01T00:00:00Z", "clinic-a", False),  # past, though after 2000's default
    ({"class": "aesthetic"}, None, "clinic-a", True),  # the class is the clinician's call
    ({"class": "medical"}, None, "clinic-a", True),
])
async def test_a_retention_at_upload_ending_sooner_than_the_medical_default_needs_the_dpo(
    api, service, retention, captured_at, tenant, clinician_may,
):
    metadata = sample_metadata(retention=retention, captured_at=captured_at or "2026-11-20T10:15:00Z")
    status, body = await api.upload(jpeg(b"img"), metadata, tenant=tenant, expect=None)
    if clinician_may:
        assert status == 201, body
    else:
        assert status == 403 and body["error"]["code"] == "forbidden"
        assert service.count_records() == 0 and await stored_blobs(service) == []
        assert len(await refusals(service)) == 1
        record = await api.upload(jpeg(b"img"), metadata, tenant=tenant, role="dpo")
        assert record["retention"] == retention


async def test_a_file_first_upload_is_refused_before_its_blob_is_committed(api, service):
    metadata = json.dumps(sample_metadata(legal_hold=True, retention=until("2020-01-01"))).encode()
    body, content_type = raw_multipart([("file", "image/jpeg", jpeg(b"img" * 1000)), ("metadata", "application/json", metadata)])
    response = await api.client.post("/v1/images", data=body, headers={**await api.headers(), "Content-Type": content_type})
    assert response.status == 403 and (await response.json())["error"]["code"] == "forbidden"
    assert service.count_records() == 0 and await stored_blobs(service) == []
    assert len(await refusals(service)) == 1

    response = await api.client.post("/v1/images", data=body, headers={**await api.headers("dpo"), "Content-Type": content_type})
    record = await response.json()
    assert response.status == 201 and record["legal_hold"] is True and record["retention"] == until("2020-01-01")
