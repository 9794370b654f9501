"""The facade checks and audits every operation once, the same way: including the operator
operations that reach the archive as a whole (rewrap, scrub, gc, stats, backup, restore, tokens)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.conftest import (
    ESCROW_PASSPHRASE,
    jpeg,
    make_config,
    make_escrow,
    sample_metadata,
)
from vault.auth import Principal, Role
from vault.errors import Forbidden, InvalidRequest
from vault.metadata import parse_metadata
from vault.service import Vault

OPERATOR = Principal("-", Role.ADMIN, "op")
CLINICIAN = Principal("clinic-a", Role.CLINICIAN, "alice")
AUDITOR = Principal("clinic-a", Role.AUDITOR, "aud")


def trail(vault: Vault) -> list[tuple[str, str, str, str]]:
    """(action, outcome, actor name, scope) of every entry, oldest first."""
    return [(e.event.action, e.event.outcome, e.event.actor.name, e.event.scope)
            for e in vault.audit.page(0, 10_000).entries]


async def upload(vault: Vault, data: bytes) -> str:
    async def body():
        yield data

    record = await vault.create_image(CLINICIAN, parse_metadata(sample_metadata()), "image/jpeg", body())
    return record.id


def operator_calls(tmp_path):
    """Every archive-wide operator operation, as (audit action, call for a principal)."""
    return [
        ("key_rewrap", lambda vault, who: vault.rewrap_keys(who)),
        ("scrub", lambda vault, who: vault.verify_blobs(who)),
        ("gc", lambda vault, who: vault.collect_garbage(who, min_age=timedelta(hours=1))),
        ("stats", lambda vault, who: vault.stats(who)),
        ("backup", lambda vault, who: vault.backup(who, tmp_path / "backup")),
        ("token_list", lambda vault, who: vault.list_tokens(who)),
        ("token_revoke", lambda vault, who: vault.revoke_token(who, "nobody")),
    ]


async def test_operator_operations_refuse_other_roles_and_audit_the_refusal(service, tmp_path):
    await upload(service, jpeg(b"image bytes"))
    for action, call in operator_calls(tmp_path):
        for who in (CLINICIAN, AUDITOR):
            before = len(trail(service))
            with pytest.raises(Forbidden):
                await call(service, who)
            added = trail(service)[before:]
            # A refusal is in the refused caller's own scope: its tenant's auditors see it.
            assert added == [(action, "forbidden", who.name, who.tenant)], action
    assert not (tmp_path / "backup").exists()  # a refused backup wrote nothing


async def test_operator_operations_are_audited_once_with_their_outcome(service, tmp_path):
    await upload(service, jpeg(b"image bytes"))
    await make_escrow(service)
    for action, call in operator_calls(tmp_path):
        before = len(trail(service))
        try:
            await call(service, OPERATOR)
            outcome = "ok"
        except Exception as exc:  # revoking an unknown token is a 404, audited as such
            outcome = exc.code  # type: ignore[attr-defined]
        added = trail(service)[before:]
        assert added == [(action, outcome, "op", "-")], action
    assert trail(service)[-1][:2] == ("token_revoke", "not_found")


async def test_token_creation_is_audited_in_its_tenant_and_a_refusal_in_the_callers(service):
    token, info = await service.create_token(OPERATOR, "clinic-b", Role.CLINICIAN, "reception", "1d")
    assert (await service.authenticate(token)).tenant == "clinic-b" and info.expires_at
    with pytest.raises(Forbidden):
        await service.create_token(CLINICIAN, "clinic-b", Role.OPERATOR, "escalate")
    # clinic-b's auditors must not learn clinic-a's user names: the attempt is clinic-a's.
    assert trail(service)[-2:] == [
        ("token_create", "ok", "op", "clinic-b"), ("token_create", "forbidden", "alice", "clinic-a"),
    ]
    assert [t.name for t in await service.list_tokens(OPERATOR)] == ["reception"]
    # A listing of every tenant's tokens: one entry in each listed tenant's scope, and the global one.
    assert trail(service)[-2:] == [("token_list", "ok", "op", "clinic-b"), ("token_list", "ok", "op", "-")]
    assert [t.name for t in await service.list_tokens(OPERATOR, "clinic-a")] == []
    assert trail(service)[-1] == ("token_list", "ok", "op", "clinic-a")
    await service.revoke_token(OPERATOR, "reception")
    assert trail(service)[-1] == ("token_revoke", "ok", "op", "clinic-b")


async def test_admin_tokens_have_no_tenant_and_other_roles_need_one(service):
    token, info = await service.create_token(OPERATOR, None, Role.ADMIN, "root", "1d")
    assert info.tenant == "-" and (await service.authenticate(token)).role is Role.ADMIN
    assert trail(service)[-1] == ("token_create", "ok", "op", "-")
    for tenant, role in (("clinic-a", Role.ADMIN), (None, Role.OPERATOR), ("-", Role.AUDITOR)):
        with pytest.raises(InvalidRequest):
            await service.create_token(OPERATOR, tenant, role, "wrong")


async def test_restore_checks_the_role_and_appends_to_the_restored_trail(service, tmp_path):
    await upload(service, jpeg(b"keep me"))
    escrow = await make_escrow(service)
    await service.backup(OPERATOR, tmp_path / "backup")
    target = make_config(tmp_path / "restored")
    with pytest.raises(Forbidden):
        await Vault.restore(CLINICIAN, target, tmp_path / "backup", escrow=escrow, escrow_passphrase=ESCROW_PASSPHRASE)
    assert not target.data_dir.exists()
    report = await Vault.restore(OPERATOR, target, tmp_path / "backup", escrow=escrow,
                                 escrow_passphrase=ESCROW_PASSPHRASE)
    restored = await Vault.open(target)
    try:
        last = trail(restored)[-1]
        assert last == ("restore", "ok", "op", "-")
        assert restored.audit.page(0, 10_000).entries[-1].event.details["records"] == report.records == 1
        assert restored.audit.verify().ok
    finally:
        await restored.close()


async def test_close_twice_is_harmless(config):
    from tests.conftest import open_vault

    vault = await open_vault(config)
    await vault.close()
    await vault.close()


async def test_tokens_expire_after_90_days_unless_never_is_asked_for(service):
    _, default = await service.create_token(OPERATOR, "clinic-a", Role.CLINICIAN, "default-life")
    _, forever = await service.create_token(OPERATOR, "clinic-a", Role.CLINICIAN, "kiosk", "never")
    created = datetime.fromisoformat(default.created_at.replace("Z", "+00:00"))
    assert datetime.fromisoformat(default.expires_at.replace("Z", "+00:00")) - created == timedelta(days=90)
    assert forever.expires_at is None
    entries = [e.event for e in service.audit.page(0, 100).entries if e.event.action == "token_create"]
    assert [e.details["expires_at"] is None for e in entries] == [False, True]
