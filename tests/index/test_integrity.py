"""The attacker who can write the index file but holds no KEK: every security-relevant field of a
record or a token is authenticated, and a forged value is refused, counted and audited.

Each test edits the LMDB file the way such an attacker would (raw values, not the service's own
writers: the JSON of a record is in the clear after the seal's 33 bytes), then reopens the
service on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vault.audit.chain import GLOBAL_SCOPE
from vault.audit.query import AuditFilter
from vault.auth import Principal, Role
from vault.cli.common import COMMAND_LINE
from vault.config import Config
from vault.errors import IndexTampered, NotFound
from vault.ids import decode_id
from vault.index import schema
from vault.index.integrity import MAC_LEN, RECORD_FORMAT, record_body
from vault.index.lmdb import Index, IndexTxn
from vault.search import SearchQuery
from tests.conftest import create_many, make_config, open_vault, sample_metadata

CLINICIAN = Principal("clinic-a", Role.CLINICIAN, "t")
DPO = Principal("clinic-a", Role.DPO, "dpo")
RESEARCHER = Principal("clinic-a", Role.RESEARCHER, "r")
OTHER_CLINICIAN = Principal("clinic-b", Role.CLINICIAN, "b")


@pytest.fixture
def fs_config(tmp_path: Path) -> Config:
    return make_config(tmp_path / "data")


def offline(config: Config, edit: Callable[[IndexTxn], Any]) -> Any:
    """Run ``edit`` on the index with the daemon closed, holding no key (as the attacker)."""
    index = Index(config.index_dir, map_size=config.lmdb_map_size)
    try:
        return index.write_sync(edit)
    finally:
        index.close()


def forge_record(config: Config, record_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit a record's JSON in place and keep its old MAC (the attacker cannot compute one)."""
    rid = decode_id(record_id)

    def edit(txn: IndexTxn) -> None:
        raw = txn.get_bytes(schema.DB_RECORDS, rid)
        assert raw is not None and raw[0] == RECORD_FORMAT
        doc = json.loads(record_body(raw))
        change(doc)
        txn.put_bytes(schema.DB_RECORDS, rid, raw[:1 + MAC_LEN] + json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())

    offline(config, edit)


def integrity_failures(vault: Any, kind: str) -> float:
    return vault.metrics.registry.get_sample_value("imagevault_index_integrity_errors_total", {"kind": kind}) or 0.0


def audit_entries(vault: Any, scope: str | None = None) -> list[dict[str, Any]]:
    wanted = AuditFilter(scopes=None if scope is None else frozenset({scope}))
    return [e.to_json() for e in vault.audit.page(0, 1000, wanted).entries]


def set_consent(doc: dict[str, Any]) -> None:
    doc["meta"]["consent"] = {**(doc["meta"].get("consent") or {}), "research": True}


def lift_hold(doc: dict[str, Any]) -> None:
    doc["meta"]["legal_hold"] = False


def expire(doc: dict[str, Any]) -> None:
    doc["retain_until"] = "2001-01-01T00:00:00Z"
    doc["meta"]["retention"] = {"class": "until", "until": "2001-01-01"}


def move_tenant(doc: dict[str, Any]) -> None:
    doc["tenant"] = "clinic-b"


def repoint_patient(doc: dict[str, Any]) -> None:
    doc["ph"] = "00" * 32


FORGERIES = {
    "tenant": move_tenant, "consent": set_consent, "legal_hold": lift_hold, "retention": expire,
    "patient_hmac": repoint_patient,
}


@pytest.mark.parametrize("field", sorted(FORGERIES))
async def test_a_forged_record_field_is_refused_counted_and_audited(fs_config: Config, field: str) -> None:
    vault = await open_vault(fs_config)
    try:
        (rid,) = await create_many(vault, 1, sample_metadata(legal_hold=True), role=Role.DPO)
        untouched = await create_many(vault, 2, sample_metadata())
    finally:
        await vault.close()
    forge_record(fs_config, rid, FORGERIES[field])

    vault = await open_vault(fs_config)
    try:
        with pytest.raises(IndexTampered):
            await vault.get_record(CLINICIAN, rid)
        with pytest.raises((IndexTampered, NotFound)):
            await vault.get_record(OTHER_CLINICIAN, rid)  # never served to the tenant it claims
        assert integrity_failures(vault, "record") >= 1
        entries = [e for e in audit_entries(vault) if e["action"] == "read" and rid in e["record_ids"]]
        assert entries and entries[-1]["outcome"] == "integrity_error"

        # A search leaves it out and says so; the other records are unaffected.
        page = await vault.search(CLINICIAN, SearchQuery(limit=50))
        assert {r.id for r in page.items} == set(untouched)
        assert page.to_json(include_personal=False)["unreadable"] == [{"id": rid, "code": "integrity_error"}]
        assert not (await vault.search(RESEARCHER, SearchQuery(limit=50))).items

        # A sweep (its retention may have been forged into the past) never shreds it.
        report = await vault.sweep_retention(COMMAND_LINE, dry_run=False)
        assert report.shredded == 0
        assert vault.index.read(lambda t: t.has_record(decode_id(rid)))
        # Nor does an erasure or a delete on the forged word.
        with pytest.raises(IndexTampered):
            await vault.shred_record(DPO, rid, override=True)
        assert vault.index.read(lambda t: t.has_record(decode_id(rid)))
        # And the scrub names it.
        scrub = await vault.verify_blobs(COMMAND_LINE)
        assert scrub.tampered == [rid] and not scrub.ok
    finally:
        await vault.close()


async def test_a_record_sealed_under_another_key_or_swapped_is_refused(fs_config: Config) -> None:
    vault = await open_vault(fs_config)
    try:
        first, second = await create_many(vault, 2, sample_metadata())
    finally:
        await vault.close()
    a, b = decode_id(first), decode_id(second)

    def swap(txn: IndexTxn) -> None:  # a valid value under the wrong id (the MAC binds the id)
        va, vb = txn.get_bytes(schema.DB_RECORDS, a), txn.get_bytes(schema.DB_RECORDS, b)
        txn.put_bytes(schema.DB_RECORDS, a, vb)
        txn.put_bytes(schema.DB_RECORDS, b, va)

    offline(fs_config, swap)
    vault = await open_vault(fs_config)
    try:
        for rid in (first, second):
            with pytest.raises(IndexTampered):
                await vault.get_record(CLINICIAN, rid)
    finally:
        await vault.close()

    def downgrade(txn: IndexTxn) -> None:  # the bare JSON of an index written before sealing
        txn.put_bytes(schema.DB_RECORDS, a, record_body(txn.get_bytes(schema.DB_RECORDS, a)))

    offline(fs_config, downgrade)
    vault = await open_vault(fs_config)
    try:
        with pytest.raises(IndexTampered):
            await vault.get_record(CLINICIAN, first)
    finally:
        await vault.close()


def token_doc_edit(config: Config, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    def edit(txn: IndexTxn) -> None:
        for key, doc in list(txn.iter_docs(schema.DB_TOKENS)):
            if doc["name"] == name:
                change(doc)
                txn.put_doc(schema.DB_TOKENS, key, doc)

    offline(config, edit)


TOKEN_FORGERIES = {
    "role": lambda d: d.update(role="dpo"),
    "tenant": lambda d: d.update(tenant="clinic-b"),
    "expiry": lambda d: d.update(expires_at=None),
    "revocation": lambda d: d.pop("revoked_at", None),
    "on_behalf": lambda d: d.update(on_behalf=True),
}


@pytest.mark.parametrize("field", sorted(TOKEN_FORGERIES))
async def test_a_forged_token_document_does_not_authenticate(fs_config: Config, field: str) -> None:
    vault = await open_vault(fs_config)
    try:
        token, _ = await vault.create_token(COMMAND_LINE, "clinic-a", Role.CLINICIAN, "app", "1d")
        assert (await vault.authenticate(token)).role is Role.CLINICIAN
        if field == "revocation":
            await vault.revoke_token(COMMAND_LINE, "app")
    finally:
        await vault.close()
    token_doc_edit(fs_config, "app", TOKEN_FORGERIES[field])

    vault = await open_vault(fs_config)
    try:
        with pytest.raises(Exception) as caught:
            await vault.authenticate(token)
        assert getattr(caught.value, "code", None) == "unauthorized"
        assert integrity_failures(vault, "token") == 1
        assert "app" not in [t.name for t in await vault.list_tokens(COMMAND_LINE)]
        assert any(e["action"] == "integrity_failure" and e["outcome"] == "integrity_error"
                   for e in audit_entries(vault, GLOBAL_SCOPE))
    finally:
        await vault.close()


async def test_a_planted_token_does_not_authenticate(fs_config: Config) -> None:
    vault = await open_vault(fs_config)
    await vault.close()
    token = "ivt_" + "A" * 43
    forged = {"name": "planted", "tenant": "clinic-a", "role": "dpo", "created_at": "2026-01-01T00:00:00Z",
              "expires_at": None, "revoked_at": None, "idle_timeout": None, "last_used_at": None, "mac": "00" * 32}
    offline(fs_config, lambda t: t.put_doc(schema.DB_TOKENS, schema.token_key(token), forged))
    vault = await open_vault(fs_config)
    try:
        with pytest.raises(Exception) as caught:
            await vault.authenticate(token)
        assert getattr(caught.value, "code", None) == "unauthorized"
    finally:
        await vault.close()


async def test_deleting_the_integrity_key_does_not_reseal_the_index(fs_config: Config) -> None:
    vault = await open_vault(fs_config)
    try:
        await create_many(vault, 1, sample_metadata())
    finally:
        await vault.close()
    offline(fs_config, lambda t: t.delete_key(schema.DB_META, schema.META_INTEGRITY))
    with pytest.raises(IndexTampered):
        await open_vault(fs_config)


def to_schema_1(txn: IndexTxn) -> None:
    """The index as a release before sealing wrote it: bare JSON records, tokens without MACs,
    no integrity key, schema version 1."""
    for rid in list(txn.iter_record_ids()):
        txn.put_bytes(schema.DB_RECORDS, rid, record_body(txn.get_bytes(schema.DB_RECORDS, rid)))
    for key, doc in list(txn.iter_docs(schema.DB_TOKENS)):
        doc.pop("mac", None)
        txn.put_doc(schema.DB_TOKENS, key, doc)
    txn.delete_key(schema.DB_META, schema.META_INTEGRITY)
    txn.put_doc(schema.DB_META, schema.META_SCHEMA, {"version": 1})


async def test_an_index_of_schema_1_is_sealed_once_at_open_and_the_upgrade_is_audited(fs_config: Config) -> None:
    vault = await open_vault(fs_config)
    try:
        ids = await create_many(vault, 2500, sample_metadata(), concurrency=64)  # more than one upgrade batch
        token, _ = await vault.create_token(COMMAND_LINE, "clinic-a", Role.CLINICIAN, "app", "never")
    finally:
        await vault.close()
    offline(fs_config, to_schema_1)

    vault = await open_vault(fs_config)
    try:
        assert (await vault.authenticate(token)).name == "app"
        assert (await vault.get_record(CLINICIAN, ids[0])).id == ids[0]
        assert (await vault.get_record(CLINICIAN, ids[-1])).id == ids[-1]
        assert vault.index.read(lambda t: t.get_doc(schema.DB_META, schema.META_SCHEMA))["version"] == schema.SCHEMA_VERSION
        upgrades = [e for e in audit_entries(vault, GLOBAL_SCOPE) if e["action"] == "index_upgrade"]
        assert len(upgrades) == 1
    finally:
        await vault.close()
    # Reopening does not upgrade again.
    vault = await open_vault(fs_config)
    try:
        upgrades = [e for e in audit_entries(vault, GLOBAL_SCOPE) if e["action"] == "index_upgrade"]
        assert len(upgrades) == 1
    finally:
        await vault.close()


async def test_the_integrity_key_is_rewrapped_by_rotation_and_survives_retirement(fs_config: Config) -> None:
    vault = await open_vault(fs_config)
    try:
        (rid,) = await create_many(vault, 1, sample_metadata())
        token, _ = await vault.create_token(COMMAND_LINE, "clinic-a", Role.CLINICIAN, "app", "never")
        await vault.rotate_keys(COMMAND_LINE, background=False)
        await vault.rewrap_keys(COMMAND_LINE)
        report = await vault.key_report(COMMAND_LINE)
        assert report.integrity_key_version == report.status.current_version
        await vault.retire_keys(COMMAND_LINE)
    finally:
        await vault.close()
    vault = await open_vault(fs_config)  # the key unwraps under the only version left
    try:
        assert (await vault.get_record(CLINICIAN, rid)).id == rid
        assert (await vault.authenticate(token)).name == "app"
    finally:
        await vault.close()


async def test_a_planted_backup_with_a_forged_record_does_not_restore(tmp_path: Path) -> None:
    """The backup's manifest checksums are not secret: the attacker rewrites them too."""
    import hashlib

    from tests.conftest import ESCROW_PASSPHRASE, make_escrow
    from vault.service import Vault
    from vault.services.backups import snapshots

    source = make_config(tmp_path / "data")
    vault = await open_vault(source)
    try:
        (rid,) = await create_many(vault, 1, sample_metadata())
        escrow = await make_escrow(vault)
        await vault.backup(COMMAND_LINE, tmp_path / "b")
    finally:
        await vault.close()
    snapshot = tmp_path / "b" / "snapshots" / snapshots(tmp_path / "b")[-1]
    forge_record(make_config(snapshot, lmdb_map_size=source.lmdb_map_size), rid, set_consent)
    manifest = json.loads((snapshot / "manifest.json").read_text())
    for name in manifest["files"]:
        if name.startswith("index/"):
            manifest["files"][name] = hashlib.sha256((snapshot / name).read_bytes()).hexdigest()
    (snapshot / "manifest.json").write_text(json.dumps(manifest))

    target = make_config(tmp_path / "restored")
    with pytest.raises(IndexTampered):
        await Vault.restore(COMMAND_LINE, target, tmp_path / "b", escrow=escrow, escrow_passphrase=ESCROW_PASSPHRASE)
    assert not any(target.data_dir.iterdir())  # nothing half restored
