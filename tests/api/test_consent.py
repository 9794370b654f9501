"""Consent: researchers see only research-consented records, pseudonymised, and lose them at once."""

from __future__ import annotations

import io

from PIL import Image

from tests.conftest import jpeg, sample_metadata

PERSONAL = ("patient_id", "description", "diagnosis")


def plain_png(color: str = "red") -> bytes:
    """A PNG without metadata: researchers get it unchanged (de-identification keeps pixels)."""
    out = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(out, "PNG")
    return out.getvalue()


async def audit_entries(api, action):
    response = await api.client.get("/v1/audit?limit=1000", headers=await api.headers("auditor"))
    assert response.status == 200
    return [e for e in (await response.json())["entries"] if e["action"] == action]


async def test_researchers_see_only_research_records_and_never_personal_fields(api):
    image = plain_png()
    consented = await api.upload(image, sample_metadata(consent={"research": True}), content_type="image/png")
    private = await api.upload(plain_png("blue"), sample_metadata(consent={"research": False, "teaching": True}),
                               content_type="image/png")
    researcher = await api.headers("researcher")

    found = await (await api.client.post("/v1/search", json={}, headers=researcher)).json()
    assert [r["id"] for r in found["items"]] == [consented["id"]]
    for field in PERSONAL:
        assert field not in found["items"][0]
    teaching = await (await api.client.post("/v1/search", json={"consent": "teaching"}, headers=researcher)).json()
    assert teaching["items"] == []

    metadata = await api.client.get(f"/v1/images/{consented['id']}/metadata", headers=researcher)
    body = await metadata.json()
    assert metadata.status == 200 and not set(PERSONAL) & set(body)
    download = await api.client.get(f"/v1/images/{consented['id']}", headers=researcher)
    assert download.status == 200 and await download.read() == image
    assert consented["patient_id"].replace(" ", "") not in download.headers["Content-Disposition"].replace(" ", "")

    for path in (f"/v1/images/{private['id']}", f"/v1/images/{private['id']}/metadata"):
        response = await api.client.get(path, headers=researcher)
        assert response.status == 404
    head = await api.client.head(f"/v1/images/{private['id']}", headers=researcher)
    assert head.status == 404


async def test_withdrawing_research_consent_takes_effect_on_the_next_request(api):
    record = await api.upload(plain_png(), sample_metadata(consent={"research": True}), content_type="image/png")
    researcher = await api.headers("researcher")
    clinician = await api.headers("clinician")
    path = f"/v1/images/{record['id']}"
    assert (await api.client.get(path, headers=researcher)).status == 200

    response = await api.client.patch(f"{path}/metadata", json={"consent": {"research": False}}, headers=clinician)
    assert response.status == 200
    assert (await api.client.get(path, headers=researcher)).status == 404
    assert (await api.client.get(f"{path}/metadata", headers=researcher)).status == 404
    found = await (await api.client.post("/v1/search", json={}, headers=researcher)).json()
    assert found["items"] == []

    await api.client.patch(f"{path}/metadata", json={"consent": {"research": True}}, headers=clinician)
    assert (await api.client.get(path, headers=researcher)).status == 200


async def test_researchers_may_not_search_by_patient_identifier(api):
    await api.upload(jpeg(b"pixels"), sample_metadata(consent={"research": True}))
    response = await api.client.post("/v1/search", json={"patient_id": "943 476 5919"}, headers=await api.headers("researcher"))
    assert response.status == 403
    assert "943 476 5919" not in await response.text()


async def test_consent_changes_are_audited_with_flags_before_and_after(api):
    record = await api.upload(jpeg(b"pixels"), sample_metadata(consent={"research": True, "method": "written"}))
    await api.client.patch(
        f"/v1/images/{record['id']}/metadata",
        json={"consent": {"research": False, "recorded_at": "2026-11-21T09:00:00Z"}},
        headers=await api.headers(),
    )
    (entry,) = await audit_entries(api, "update")
    assert entry["record_ids"] == [record["id"]] and entry["outcome"] == "ok"
    assert entry["details"]["fields"] == ["consent"]
    before, after = entry["details"]["consent"]["before"], entry["details"]["consent"]["after"]
    assert before["research"] is True and after["research"] is False
    assert before["care"] is after["care"] is True
    assert after["recorded_at"] == "2026-11-21T09:00:00Z" and after["method"] == "written"


async def test_a_legal_hold_is_placed_or_lifted_only_by_a_dpo(api):
    record = await api.upload(jpeg(b"pixels"))
    path = f"/v1/images/{record['id']}/metadata"
    response = await api.client.patch(path, json={"legal_hold": True}, headers=await api.headers())
    assert response.status == 403
    response = await api.client.patch(path, json={"legal_hold": True}, headers=await api.headers("dpo"))
    assert response.status == 200 and (await response.json())["legal_hold"] is True
    response = await api.client.patch(path, json={"legal_hold": False}, headers=await api.headers())
    assert response.status == 403
    (entry,) = [e for e in await audit_entries(api, "update") if e["outcome"] == "ok"]
    assert entry["details"]["legal_hold"] == {"before": False, "after": True}


async def test_shortening_retention_by_patch_needs_the_dpo_override(api):
    record = await api.upload(jpeg(b"pixels"))  # medical: ten years from capture
    path = f"/v1/images/{record['id']}/metadata"
    shorter = {"retention": {"class": "until", "until": "2020-01-01"}}
    response = await api.client.patch(path, json=shorter, headers=await api.headers())
    assert response.status == 403
    response = await api.client.patch(path, json={"captured_at": "2001-01-01T00:00:00Z"}, headers=await api.headers())
    assert response.status == 403  # an earlier capture date would end a medical obligation sooner
    longer = {"retention": {"class": "until", "until": "2099-01-01"}}
    response = await api.client.patch(path, json=longer, headers=await api.headers())
    assert response.status == 200 and (await response.json())["retain_until"] == "2099-01-01T00:00:00Z"
    response = await api.client.patch(path, json=shorter, headers=await api.headers("dpo"))
    assert response.status == 200
    entry = [e for e in await audit_entries(api, "update") if e["outcome"] == "ok"][-1]
    assert entry["details"]["retain_until"] == {"before": "2099-01-01T00:00:00Z", "after": "2020-01-01T00:00:00Z"}
