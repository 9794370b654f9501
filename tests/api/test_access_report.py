"""The DPO's access report: exactly the audited accesses to one patient's records in the DPO's
tenant (reads, searches that returned them, updates, exports, refusals), none of another
patient's or another tenant's; streamed; itself audited with the record ids, never the patient."""

from __future__ import annotations

import json

from tests.api.test_roles import tiny_png
from tests.conftest import jpeg, sample_metadata

P = "ACCESS-REPORT-PATIENT-1"
Q = "ACCESS-REPORT-PATIENT-2"


async def report(api, patient, tenant="clinic-a"):
    response = await api.client.post("/v1/patients/access-report", json={"patient_id": patient},
                                      headers=await api.headers("dpo", tenant))
    assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
    assert response.headers.get("Transfer-Encoding") == "chunked"
    return json.loads(await response.read())


def summary(accesses):
    return [(a["action"], a["outcome"], a["actor"]["role"], a["record_ids"]) for a in accesses]


async def test_the_report_lists_exactly_the_accesses_to_the_patients_records(api, service):
    clinician = await api.headers("clinician")
    consented = sample_metadata(patient_id=P, consent={"research": True}, lesion_id="L-REPORT")
    r1 = (await api.upload(tiny_png(), consented, content_type="image/png"))["id"]
    r2 = (await api.upload(jpeg(b"two"), sample_metadata(patient_id=P)))["id"]
    q1 = (await api.upload(jpeg(b"other"), sample_metadata(patient_id=Q, lesion_id="L-REPORT")))["id"]
    b1 = (await api.upload(jpeg(b"b"), sample_metadata(patient_id=P), tenant="clinic-b"))["id"]

    assert (await api.client.get(f"/v1/images/{r1}/metadata", headers=clinician)).status == 200
    assert (await api.client.get(f"/v1/images/{r2}", headers=clinician)).status == 200
    researcher = await api.headers("researcher")
    assert (await api.client.get(f"/v1/images/{r1}/metadata", headers=researcher)).status == 200
    assert (await api.client.get(f"/v1/images/{r2}/metadata", headers=researcher)).status == 404
    search = await api.client.post("/v1/search", json={"lesion_id": "L-REPORT"}, headers=clinician)
    assert {r["id"] for r in (await search.json())["items"]} == {r1, q1}
    assert (await api.client.patch(f"/v1/images/{r1}/metadata", json={"tags": ["seen"]}, headers=clinician)).status == 200
    export = await api.client.post("/v1/patients/export", json={"patient_id": P}, headers=await api.headers("dpo"))
    assert export.status == 200 and await export.read()
    assert (await api.client.get(f"/v1/images/{r1}", headers=await api.headers("operator"))).status == 403
    # Not this patient's, or not this tenant's: never in the report.
    assert (await api.client.get(f"/v1/images/{q1}/metadata", headers=clinician)).status == 200
    assert (await api.client.get(f"/v1/images/{r1}/metadata", headers=await api.headers("clinician", "clinic-b"))).status == 404
    assert (await api.client.get(f"/v1/images/{b1}/metadata", headers=await api.headers("clinician", "clinic-b"))).status == 200

    first = await report(api, P)
    assert first["records"] == [r1, r2] and "merged_ids" not in first
    assert summary(first["accesses"]) == [
        ("create", "ok", "clinician", [r1]),
        ("create", "ok", "clinician", [r2]),
        ("read", "ok", "clinician", [r1]),
        ("read", "ok", "clinician", [r2]),
        ("read", "ok", "researcher", [r1]),
        ("read", "not_found", "researcher", [r2]),
        ("search", "ok", "clinician", [r1]),
        ("update", "ok", "clinician", [r1]),
        ("export", "ok", "dpo", [r1, r2]),
        ("read", "forbidden", "operator", [r1]),
    ]
    names = {a["actor"]["name"] for a in first["accesses"]}
    assert names and all(n.startswith("clinic-a-") for n in names)
    assert all(set(a) == {"seq", "time", "actor", "action", "outcome", "record_ids"} for a in first["accesses"])
    assert [a["seq"] for a in first["accesses"]] == sorted(a["seq"] for a in first["accesses"])

    # The report is audited: the records it covered, never the patient id.
    entry = service.audit.page(first["through_seq"], 10).entries[0]
    assert (entry.event.action, entry.event.scope) == ("access_report", "clinic-a")
    assert sorted(entry.event.record_ids) == sorted((service_id(r1), service_id(r2)))
    assert P not in json.dumps(entry.to_json())
    # ...and so the next report shows the first.
    second = await report(api, P)
    assert summary(second["accesses"])[-1] == ("access_report", "ok", "dpo", [r1, r2])

    # clinic-b's DPO asking about the same patient id sees clinic-b's record only.
    theirs = await report(api, P, tenant="clinic-b")
    assert theirs["records"] == [b1]
    assert summary(theirs["accesses"]) == [("create", "ok", "clinician", [b1]), ("read", "ok", "clinician", [b1])]


def service_id(text):
    from vault.ids import decode_id

    return decode_id(text)


async def test_an_unknown_patient_gets_an_empty_report_and_roles_other_than_dpo_403(api):
    empty = await report(api, "NOBODY-HERE-9")
    assert empty["records"] == [] and empty["accesses"] == []
    for role in ("clinician", "researcher", "operator", "auditor", "admin"):
        response = await api.client.post("/v1/patients/access-report", json={"patient_id": P},
                                          headers=await api.headers(role))
        assert response.status == 403 and (await response.json())["error"]["code"] == "forbidden"
    bad = await api.client.post("/v1/patients/access-report", json={"patient": P}, headers=await api.headers("dpo"))
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "unknown_field"


async def test_an_erased_records_accesses_leave_the_report_with_it(api):
    clinician = await api.headers("clinician")
    kept = (await api.upload(jpeg(b"kept"), sample_metadata(patient_id=P)))["id"]
    expired = {"class": "until", "until": "2020-01-01"}  # a clinician may delete it; the dpo sets such a date
    gone = (await api.upload(jpeg(b"gone"), sample_metadata(patient_id=P, retention=expired), role="dpo"))["id"]
    assert (await api.client.delete(f"/v1/images/{gone}?reason=duplicate", headers=clinician)).status == 200
    after = await report(api, P)
    assert after["records"] == [kept]
    assert all(a["record_ids"] == [kept] for a in after["accesses"])
