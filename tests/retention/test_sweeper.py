"""Retention: dates per class and tenant, and a sweeper that shreds exactly what has expired."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import create_many, jpeg, make_config, open_vault, sample_metadata
from vault.api.app import create_app
from vault.auth import Principal, Role
from vault.config import ConfigError, load_config
from vault.errors import NotFound
from vault.services.sweeper import SCHEDULED_SWEEPER

OPERATOR = Principal("-", Role.ADMIN, "test-operator")
CLINICIAN = Principal("clinic-a", Role.CLINICIAN, "test")


def entries(service, action):
    return [e for e in service.audit.page(0, 1000).entries if e.event.action == action]


async def test_retain_until_follows_the_class(api):
    medical = await api.upload(jpeg(b"m"))
    aesthetic = await api.upload(jpeg(b"a"), sample_metadata(retention={"class": "aesthetic"}))
    # Earlier than the medical default: the dpo's to set.
    until = await api.upload(jpeg(b"u"), sample_metadata(retention={"class": "until", "until": "2031-05-01"}), role="dpo")
    assert medical["retain_until"] == "2036-11-20T10:15:00Z"
    assert aesthetic["retain_until"] == "2028-11-20T10:15:00Z"
    assert until["retain_until"] == "2031-05-01T00:00:00Z"


async def test_medical_retention_is_configurable_per_tenant(tmp_path):
    config = make_config(tmp_path / "data", medical_retention_by_tenant="clinic-a=15, clinic-c=8")
    service = await open_vault(config)
    try:
        for tenant, expected in (("clinic-a", "2041"), ("clinic-b", "2036"), ("clinic-c", "2034")):
            (rid,) = await create_many(service, 1, sample_metadata(), tenant=tenant)
            record = await service.get_record(Principal(tenant, Role.CLINICIAN, "t"), rid)
            assert record.retain_until == f"{expected}-11-20T10:15:00Z"
    finally:
        await service.close()


def test_per_tenant_retention_is_read_from_toml_tables_and_strings(tmp_path):
    toml = tmp_path / "vault.toml"
    toml.write_text('[medical_retention_by_tenant]\n"clinic-a" = 15\n')
    assert load_config(config_file=toml, environ={}).medical_retention_by_tenant == "clinic-a=15"
    env = {"IMAGEVAULT_MEDICAL_RETENTION_BY_TENANT": "clinic-b=8"}
    assert load_config(environ=env).medical_retention_by_tenant == "clinic-b=8"
    for bad in ("clinic-a", "clinic-a=ten", "clinic-a=0", "=5", "clinic-a=true"):
        with pytest.raises(ConfigError):
            load_config(environ={"IMAGEVAULT_MEDICAL_RETENTION_BY_TENANT": bad})
    with pytest.raises(ConfigError):
        load_config(environ={"IMAGEVAULT_SWEEP_INTERVAL": "-1"})


async def test_sweep_with_a_moved_clock_shreds_exactly_the_expired_records(service, clock):
    aesthetic = await create_many(service, 30, sample_metadata(retention={"class": "aesthetic"}))  # 2028-11-20
    # Dates earlier than the medical default: set by the dpo.
    soon = await create_many(service, 20, sample_metadata(retention={"class": "until", "until": "2027-06-01"}), role=Role.DPO)
    later = await create_many(service, 10, sample_metadata(retention={"class": "until", "until": "2029-01-01"}), role=Role.DPO)
    medical = await create_many(service, 10, sample_metadata())  # 2036-11-20
    other_tenant = await create_many(service, 5, sample_metadata(retention={"class": "aesthetic"}), tenant="clinic-b")

    report = await service.sweep_retention(OPERATOR)
    assert (report.due, report.shredded, report.held) == (0, 0, 0)

    clock.advance(days=365 * 2 + 5)  # 2028-11-25: the aesthetic and "soon" records are due
    dry = await service.sweep_retention(OPERATOR, dry_run=True)
    assert (dry.due, dry.shredded, dry.held) == (55, 0, 0)
    assert service.count_records() == 75
    report = await service.sweep_retention(OPERATOR)
    assert (report.due, report.shredded, report.held) == (55, 55, 0)
    for rid in aesthetic + soon:
        with pytest.raises(NotFound):
            await service.get_record(CLINICIAN, rid)
    for rid in later + medical:
        await service.get_record(CLINICIAN, rid)
    assert service.count_records() == 20

    expired = entries(service, "expire")
    by_tenant = {e.event.scope: len(e.event.record_ids) for e in expired}
    assert by_tenant == {"clinic-a": 50, "clinic-b": 5}
    assert all(e.event.actor.name == "test-operator" for e in expired)
    summary = entries(service, "retention_sweep")[-1]
    assert summary.event.scope == "-" and summary.event.details == {"due": 55, "shredded": 55, "held": 0, "dry_run": False}
    assert len(other_tenant) == 5

    clock.advance(days=365 * 9)  # past 2036-11-20: everything else
    report = await service.sweep_retention(OPERATOR)
    assert report.shredded == 20 and service.count_records() == 0


async def test_sweep_keeps_records_on_legal_hold_and_counts_them(service, clock):
    held = await create_many(service, 3, sample_metadata(retention={"class": "aesthetic"}, legal_hold=True), role=Role.DPO)
    await create_many(service, 2, sample_metadata(retention={"class": "aesthetic"}))
    clock.advance(days=365 * 3)
    report = await service.sweep_retention(OPERATOR)
    assert (report.due, report.shredded, report.held) == (5, 2, 3)
    for rid in held:
        await service.get_record(CLINICIAN, rid)


async def test_only_operators_may_sweep(service):
    from vault.errors import Forbidden

    for role in (Role.CLINICIAN, Role.DPO, Role.RESEARCHER, Role.AUDITOR):
        with pytest.raises(Forbidden):
            await service.sweep_retention(Principal("clinic-a", role, "x"))
    refused = [e for e in entries(service, "retention_sweep") if e.event.outcome == "forbidden"]
    assert len(refused) == 4


async def test_the_daemon_sweeps_on_its_schedule_and_not_when_disabled(aiohttp_client, tmp_path, clock):
    for interval, expect_gone in ((0.05, True), (0, False)):
        config = make_config(tmp_path / f"data-{interval}", sweep_interval=interval)
        service = await open_vault(config, clock)
        try:
            ids = await create_many(
                service, 4, sample_metadata(retention={"class": "until", "until": "2020-01-01"}), role=Role.DPO,
            )
            client = await aiohttp_client(create_app(config, vault=service))
            await asyncio.sleep(0.3)
            assert (service.count_records() == 0) is expect_gone
            if expect_gone:
                (expired,) = entries(service, "expire")
                assert expired.event.actor.name == SCHEDULED_SWEEPER.name
                assert len(expired.event.record_ids) == len(ids)
            await client.close()
        finally:
            await service.close()


async def test_sweep_endpoint_answers_counts_and_rejects_bad_flags(api, service, clock):
    await api.upload(jpeg(b"x"), sample_metadata(retention={"class": "aesthetic"}))
    operator = await api.headers("operator")
    clock.advance(days=800)
    response = await api.client.post("/v1/admin/retention/sweep?dry_run=true", headers=operator)
    assert await response.json() == {"due": 1, "shredded": 0, "held": 0}
    response = await api.client.post("/v1/admin/retention/sweep?dry_run=maybe", headers=operator)
    assert response.status == 400 and (await response.json())["error"]["code"] == "invalid_request"
    response = await api.client.post("/v1/admin/retention/sweep?dry_run=false", headers=operator)
    assert await response.json() == {"due": 1, "shredded": 1, "held": 0}


async def test_an_operators_sweep_covers_its_own_tenant_and_an_admins_every_tenant(service, clock):
    aesthetic = sample_metadata(retention={"class": "aesthetic"})
    mine = await create_many(service, 3, aesthetic)
    theirs = await create_many(service, 2, aesthetic, tenant="clinic-b")
    clock.advance(days=800)
    operator = Principal("clinic-a", Role.OPERATOR, "op-a")
    assert (await service.sweep_retention(operator, dry_run=True)).to_json() == {"due": 3, "shredded": 0, "held": 0}
    report = await service.sweep_retention(operator)
    assert report.to_json() == {"due": 3, "shredded": 3, "held": 0}
    (expired,) = entries(service, "expire")
    assert expired.event.scope == "clinic-a" and len(expired.event.record_ids) == len(mine)
    assert [e.event.scope for e in entries(service, "retention_sweep")] == ["clinic-a", "clinic-a"]
    assert service.count_records() == len(theirs)  # clinic-b's due records untouched
    assert (await service.sweep_retention(OPERATOR)).to_json() == {"due": 2, "shredded": 2, "held": 0}
    assert [e.event.scope for e in entries(service, "expire")] == ["clinic-a", "clinic-b"]
    assert entries(service, "retention_sweep")[-1].event.scope == "-"
