"""Patient-id schemes through the service: which ids are one patient for search, erasure, legal
hold and export, per tenant; what an existing data directory keeps; the ``merged_ids`` answer."""

from __future__ import annotations

import io
import json
import logging
import zipfile

import pytest

from tests.conftest import jpeg, make_config, open_vault, png, sample_metadata
from vault.auth import Principal, Role
from vault.index import patient_ids, schema
from vault.index.lmdb import Index
from vault.metadata import parse_metadata
from vault.search import SearchQuery

# clinic-a takes the new directory's default (exact); the others are configured.
SCHEMES = "clinic-n=nhs, clinic-l=legacy"
NHS_NUMBER = "943 476 5919"


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path / "data", patient_id_scheme_by_tenant=SCHEMES)


async def post(api, path, body, role="dpo", tenant="clinic-a"):
    response = await api.client.post(path, json=body, headers=await api.headers(role, tenant))
    return response.status, (await response.read())


async def search_ids(api, patient_id, tenant):
    status, body = await post(api, "/v1/search", {"patient_id": patient_id}, "clinician", tenant)
    assert status == 200, body
    page = json.loads(body)
    return sorted(r["id"] for r in page["items"]), page


async def test_a_new_directory_records_exact_and_each_tenant_its_configured_scheme(api, service):
    for tenant in ("clinic-a", "clinic-n", "clinic-l"):
        await api.upload(jpeg(b"img"), sample_metadata(patient_id=NHS_NUMBER), tenant=tenant)

    def recorded(txn):
        default = txn.get_doc(schema.DB_META, schema.META_PATIENT_ID_SCHEME)
        return default, {t: patient_ids.recorded(txn, t) for t in ("clinic-a", "clinic-n", "clinic-l")}

    assert service.index.read(recorded) == (
        {"default": "exact"}, {"clinic-a": "exact", "clinic-n": "nhs", "clinic-l": "legacy"},
    )


async def test_exact_keeps_apart_ids_that_legacy_folding_would_merge(api):
    first = await api.upload(jpeg(b"one"), sample_metadata(patient_id="AB-12"))
    second = await api.upload(jpeg(b"two"), sample_metadata(patient_id="ab12"))
    found, page = await search_ids(api, "AB-12", "clinic-a")
    assert found == [first["id"]] and "merged_ids" not in page
    assert (await search_ids(api, "\u00a0AB-12 ", "clinic-a"))[0] == [first["id"]]  # only trimming
    assert (await search_ids(api, "ab-12", "clinic-a"))[0] == []

    status, body = await post(api, "/v1/patients/export", {"patient_id": "ab12"})
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(body)).read("manifest.json"))
    assert status == 200 and [f["record"]["id"] for f in manifest["files"]] == [second["id"]]
    status, body = await post(api, "/v1/patients/erase", {"patient_id": "AB-12", "reason": "r", "override_retention": True})
    report = json.loads(body)
    assert status == 200 and report["shredded"] == 1 and "merged_ids" not in report
    assert (await search_ids(api, "ab12", "clinic-a"))[0] == [second["id"]]


async def test_an_nhs_tenant_ignores_spacing_and_hyphens(api):
    record = await api.upload(jpeg(b"img"), sample_metadata(patient_id=NHS_NUMBER), tenant="clinic-n")
    for written in ("943-476-5919", "9434765919", " 943 476-5919 "):
        assert (await search_ids(api, written, "clinic-n"))[0] == [record["id"]]
    status, body = await post(api, "/v1/patients/legal-hold", {"patient_id": "9434765919", "hold": True, "reason": "r"},
                              tenant="clinic-n")
    assert (status, json.loads(body)) == (200, {"updated": 1})


@pytest.mark.parametrize("invalid", ["9434765918", "94347659", "943.476.5919", "NHS-PATIENT-ZX81Q"])
async def test_an_nhs_tenant_refuses_an_invalid_number_everywhere_naming_the_field(api, service, invalid):
    record = await api.upload(jpeg(b"img"), sample_metadata(patient_id=NHS_NUMBER), tenant="clinic-n")
    status, payload = await api.upload(jpeg(b"x"), sample_metadata(patient_id=invalid), tenant="clinic-n", expect=None)
    assert status == 400 and payload["error"]["code"] == "invalid_metadata" and payload["error"]["field"] == "patient_id"
    assert service.count_records() == 1
    patch = await api.client.patch(f"/v1/images/{record['id']}/metadata", json={"patient_id": invalid},
                                   headers=await api.headers("dpo", "clinic-n"))
    error = (await patch.json())["error"]
    assert patch.status == 400 and (error["code"], error["field"]) == ("invalid_metadata", "patient_id")
    for path, body in [
        ("/v1/search", {"patient_id": invalid}),
        ("/v1/patients/erase", {"patient_id": invalid, "reason": "r", "override_retention": True}),
        ("/v1/patients/legal-hold", {"patient_id": invalid, "hold": True, "reason": "r"}),
        ("/v1/patients/export", {"patient_id": invalid}),
    ]:
        status, raw = await post(api, path, body, tenant="clinic-n")
        error = json.loads(raw)["error"]
        assert status == 400 and (error["code"], error["field"]) == ("invalid_request", "patient_id"), path
        assert invalid.encode() not in raw
    metadata = await (await api.client.get(f"/v1/images/{record['id']}/metadata",
                                           headers=await api.headers("dpo", "clinic-n"))).json()
    assert metadata["patient_id"] == NHS_NUMBER and metadata["legal_hold"] is False


async def test_legacy_search_and_erasure_say_when_they_matched_differently_written_ids(api, service):
    merged = [(await api.upload(jpeg(b"%d" % n), sample_metadata(patient_id=pid), tenant="clinic-l"))["id"]
              for n, pid in enumerate(["AB-12", "ab12"])]
    alike = [(await api.upload(jpeg(b"c%d" % n), sample_metadata(patient_id="CD-34"), tenant="clinic-l"))["id"] for n in range(2)]

    found, page = await search_ids(api, "AB-12", "clinic-l")
    assert found == sorted(merged) and page["merged_ids"] is True
    found, page = await search_ids(api, " CD-34", "clinic-l")
    assert found == sorted(alike) and page["merged_ids"] is False
    assert (await search_ids(api, "cd34", "clinic-l"))[1]["merged_ids"] is True

    status, body = await post(api, "/v1/patients/erase", {"patient_id": "AB-12", "reason": "r", "override_retention": True},
                              tenant="clinic-l")
    report = json.loads(body)
    assert status == 200 and report["shredded"] == 2 and report["merged_ids"] is True
    status, body = await post(api, "/v1/patients/erase", {"patient_id": "CD-34", "reason": "r", "override_retention": True},
                              tenant="clinic-l")
    assert json.loads(body)["merged_ids"] is False

    entries = [e for e in service.audit.page(0, 1000).entries if e.event.action in ("erase", "search")]
    assert [e.event.details["merged_ids"] for e in entries if e.event.action == "erase"] == [True, False]
    assert [e.event.details.get("merged_ids") for e in entries if e.event.action == "search"] == [True, False, True]
    trail = json.dumps([e.event.details for e in entries])
    for pid in ("AB-12", "ab12", "CD-34", "cd34"):
        assert pid not in trail


# data directories indexed before schemes existed --------------------------------------------
def forget_schemes(config):
    """Make a data directory look as if it was indexed before schemes existed: no recorded
    default, no recorded tenant schemes (its entries were written with legacy's normalisation)."""
    index = Index(config.index_dir, map_size=config.lmdb_map_size)

    def strip(txn):
        txn.delete_key(schema.DB_META, schema.META_PATIENT_ID_SCHEME)
        for key, doc in list(txn.iter_docs(schema.DB_TENANTS)):
            doc.pop("patient_id_scheme", None)
            txn.put_doc(schema.DB_TENANTS, key, doc)

    try:
        index.write_sync(strip)
    finally:
        index.close()


async def store(vault, patient_id, tenant):
    async def body():
        yield png(b"pixels")

    principal = Principal(tenant, Role.CLINICIAN, "t")
    return (await vault.create_image(principal, parse_metadata(sample_metadata(patient_id=patient_id)), "image/png", body())).id


async def found(vault, patient_id, tenant):
    page = await vault.search(Principal(tenant, Role.CLINICIAN, "t"), SearchQuery(patient_id=patient_id))
    return sorted(r.id for r in page.items), page.merged_ids


@pytest.fixture
async def existing_directory(tmp_path):
    """A data directory whose clinic-a records were indexed before schemes existed."""
    config = make_config(tmp_path / "old", patient_id_scheme="legacy")
    vault = await open_vault(config)
    try:
        ids = [await store(vault, NHS_NUMBER, "clinic-a"), await store(vault, "AB-12", "clinic-a")]
    finally:
        await vault.close()
    forget_schemes(config)
    return config, ids


async def test_an_existing_directory_keeps_legacy_for_its_tenants_and_new_ones_by_default(existing_directory):
    old, (nhs_record, ab_record) = existing_directory
    vault = await open_vault(make_config(old.data_dir, patient_id_scheme_by_tenant="clinic-c=exact"))
    try:
        assert await found(vault, "943-476-5919", "clinic-a") == ([nhs_record], True)
        assert await found(vault, "ab12", "clinic-a") == ([ab_record], True)
        b_record = await store(vault, "EF-56", "clinic-b")  # a new tenant: the directory's default
        assert await found(vault, "ef56", "clinic-b") == ([b_record], True)
        c_record = await store(vault, "EF-56", "clinic-c")  # a new tenant configured exact
        assert await found(vault, "ef56", "clinic-c") == ([], None)
        assert await found(vault, "EF-56", "clinic-c") == ([c_record], None)
        assert vault.index.read(lambda t: t.get_doc(schema.DB_META, schema.META_PATIENT_ID_SCHEME)) == {"default": "legacy"}
    finally:
        await vault.close()


async def test_a_configured_switch_waits_for_the_reindex_and_says_so(existing_directory, caplog):
    old, (nhs_record, ab_record) = existing_directory
    # clinic-a's entries were written under legacy: nhs is configured, legacy stays in use.
    config = make_config(old.data_dir, patient_id_scheme_by_tenant="clinic-a=nhs")
    vault = await open_vault(config)
    try:
        with caplog.at_level(logging.WARNING, logger="vault.index.patient_ids"):
            assert await found(vault, "943-476-5919", "clinic-a") == ([nhs_record], True)
            assert await found(vault, "ab12", "clinic-a") == ([ab_record], True)  # not an NHS number: still found
        assert "clinic-a" in caplog.text and "reindex pending" in caplog.text
        assert caplog.text.count("reindex pending") == 1
        assert "943" not in caplog.text and "AB-12" not in caplog.text
        wanted = patient_ids.settings(config.patient_id_scheme, config.patient_id_scheme_by_tenant)
        pending = vault.index.read(lambda t: patient_ids.pending_switches(t, wanted))
        assert pending == {"clinic-a": patient_ids.TenantScheme("legacy", "nhs")}
    finally:
        await vault.close()
