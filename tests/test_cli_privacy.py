"""The privacy commands as scripts run them: retention sweep, audit verify, audited token commands."""

from __future__ import annotations

import json
import struct
from datetime import datetime, timezone

import lmdb

from tests.conftest import create_many, open_vault, sample_metadata
from tests.test_daemon import cli
from vault.audit.store import DB_ENTRIES, AuditLog
from vault.auth import Role
from vault.config import load_config


def audit_actions(data_dir):
    log = AuditLog(data_dir / "audit", lambda: datetime.now(timezone.utc))
    try:
        return [(e.event.action, e.event.outcome, e.event.actor.name) for e in log.page(0, 1000).entries]
    finally:
        log.close()


async def test_retention_sweep_and_audit_verify_from_the_command_line(tmp_path):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "auditor", "--name", "aud").stdout.strip()
    assert token.startswith("ivt_")
    service = await open_vault(load_config(data_dir=data_dir, environ={}))
    try:
        # Expired at upload: the dpo's to set.
        await create_many(service, 7, sample_metadata(retention={"class": "until", "until": "2020-01-01"}), role=Role.DPO)
        await create_many(service, 2, sample_metadata())
    finally:
        await service.close()

    dry = cli(data_dir, "retention", "sweep", "--dry-run", "--json")
    assert json.loads(dry.stdout) == {"due": 7, "shredded": 0, "held": 0}
    refused = cli(data_dir, "retention", "sweep", "--json", check=False)
    assert refused.returncode == 1 and "confirm with --yes" in refused.stderr
    assert json.loads(cli(data_dir, "retention", "sweep", "--dry-run", "--json").stdout)["due"] == 7
    done = cli(data_dir, "retention", "sweep", "--yes", "--json")
    assert json.loads(done.stdout) == {"due": 7, "shredded": 7, "held": 0}

    verified = cli(data_dir, "audit", "verify", "--json")
    result = json.loads(verified.stdout)
    assert result["ok"] is True and result["entries"] > 10
    actions = audit_actions(data_dir)
    assert ("token_create", "ok") in [(a, o) for a, o, _ in actions]
    assert any(a == "expire" and name == "cli" for a, _, name in actions)
    assert actions[-1][:2] == ("audit_verify", "ok")

    env = lmdb.open(str(data_dir / "audit"), max_dbs=4)
    with env.begin(write=True, db=env.open_db(DB_ENTRIES)) as txn:
        txn.delete(struct.pack(">Q", 5))
    env.close()
    broken = cli(data_dir, "audit", "verify", "--json", check=False)
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["bad_seq"] == 5
    assert broken.stderr.strip().splitlines()[-1].startswith("imagevault: audit chain broken at entry 5")


def test_token_commands_are_audited_even_when_refused(tmp_path):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "dpo", "--name", "dpo-1")
    refused = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "dpo", "--name", "dpo-1", check=False)
    assert refused.returncode == 1
    cli(data_dir, "token", "list")
    cli(data_dir, "token", "revoke", "dpo-1")
    actions = [(a, o) for a, o, _ in audit_actions(data_dir)]
    # The listing of every tenant: one entry in clinic-a's scope (its token names were shown), one global.
    assert actions == [("token_create", "ok"), ("token_create", "conflict"), ("token_list", "ok"), ("token_list", "ok"),
                       ("token_revoke", "ok")]


def test_admin_tokens_have_no_tenant_and_audit_list_filters_every_scope(tmp_path):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    admin = cli(data_dir, "token", "create", "--role", "admin", "--name", "root")
    assert admin.stdout.startswith("ivt_") and "tenant=none (admin)" in admin.stderr
    refused = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "admin", "--name", "x", check=False)
    assert refused.returncode == 1 and "no tenant" in refused.stderr
    refused = cli(data_dir, "token", "create", "--role", "auditor", "--name", "y", check=False)
    assert refused.returncode == 1 and "needs a tenant" in refused.stderr
    cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "auditor", "--name", "aud")
    listed = json.loads(cli(data_dir, "token", "list", "--tenant", "-", "--json").stdout)
    assert [(t["name"], t["tenant"], t["role"]) for t in listed] == [("root", "-", "admin")]

    every = [json.loads(line) for line in cli(data_dir, "audit", "list", "--json").stdout.splitlines()]
    assert [(e["action"], e["tenant"]) for e in every] == [
        ("token_create", "-"), ("token_create", "clinic-a"), ("token_create", "-"), ("token_create", "clinic-a"),
        ("token_list", "-"),
    ]
    assert [e["outcome"] for e in every] == ["ok", "invalid_request", "invalid_request", "ok", "ok"]
    assert all(e["actor"] == {"name": "cli", "role": "admin", "tenant": "-", "via": "token", "on_behalf_of": None}
               for e in every)
    mine = [json.loads(line) for line in cli(data_dir, "audit", "list", "--tenant", "clinic-a", "--json").stdout.splitlines()]
    assert [e["seq"] for e in mine] == [2, 4]
    since = every[-1]["time"]
    late = [json.loads(line) for line in cli(data_dir, "audit", "list", "--since", since, "--actor", "cli", "--json").stdout.splitlines()]
    assert [e["action"] for e in late][:1] == ["token_list"]
    bad = cli(data_dir, "audit", "list", "--until", "yesterday", check=False)
    assert bad.returncode == 1 and "--until" in bad.stderr
    # The listings themselves are audited (globally: the command line is the admin).
    assert audit_actions(data_dir)[-3:] == [("audit_read", "ok", "cli")] * 3
