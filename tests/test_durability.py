"""Start-up recovery, scrub, backup during load and restore that keeps erasures erased."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest

from tests.conftest import ESCROW_PASSPHRASE, jpeg, make_config, make_escrow, open_vault, random_image, sample_metadata
from vault.auth import Principal, Role
from vault.services.backups import snapshots
from vault.ids import encode_id, new_record_id
from vault.metadata import parse_metadata
from vault.service import Vault

CLINICIAN = Principal("clinic-a", Role.CLINICIAN, "t")
DPO = Principal("clinic-a", Role.DPO, "dpo")
OPERATOR = Principal("-", Role.ADMIN, "op")


async def store(vault: Vault, data: bytes, *, principal: Principal = CLINICIAN, **meta) -> str:
    async def body():
        for offset in range(0, len(data), 65536):
            yield data[offset:offset + 65536]
        if not data:
            return

    record = await vault.create_image(principal, parse_metadata(sample_metadata(**meta)), "image/jpeg", body())
    return record.id


async def read(vault: Vault, record_id: str) -> bytes:
    handle = await vault.open_image(CLINICIAN, record_id)
    return b"".join([piece async for piece in handle.stream()])


def blob_file(vault: Vault, record_id: str):
    return vault.config.blobs_dir / record_id[-2:].lower() / f"{record_id}.ivb"


async def test_start_up_recovery_quarantines_bad_entries_and_serves_nothing_corrupt(tmp_path, caplog):
    config = make_config(tmp_path / "data")
    vault = await open_vault(config)
    good = await store(vault, random_image(100_000, 1))
    truncated = await store(vault, random_image(200_000, 2))
    blobless = await store(vault, random_image(1000, 3))
    path = blob_file(vault, truncated)
    path.write_bytes(path.read_bytes()[:-5000])
    blob_file(vault, blobless).unlink()
    orphan = encode_id(new_record_id())
    writer = await vault.backend.open_writer(orphan)
    await writer.write(b"ciphertext of an upload that never reached the index")
    await writer.commit()
    for n in range(3):
        (config.blobs_dir / "tmp" / f"{orphan}.{n:016x}.tmp").write_bytes(b"partial")
    await vault.close()

    caplog.set_level(logging.INFO)
    vault = await Vault.open(config, daemon=True)
    try:
        report = vault.recovery
        assert report.temporary_removed == 3
        assert report.orphans_quarantined == 1
        assert report.damaged_quarantined == [truncated]
        assert report.records_without_blob == [blobless]
        assert any("start-up recovery" in r.getMessage() for r in caplog.records)
        assert (config.data_dir / "quarantine" / f"{orphan}.ivb").exists()
        assert (config.data_dir / "quarantine" / f"{truncated}.ivb").exists()
        assert list((config.blobs_dir / "tmp").iterdir()) == []
        assert await read(vault, good) == random_image(100_000, 1)
        for bad in (truncated, blobless):
            from vault.errors import BlobCorrupt

            with pytest.raises(BlobCorrupt):
                await read(vault, bad)
    finally:
        await vault.close()


async def test_recovery_keeps_a_blob_sealed_with_another_chunk_size(tmp_path):
    """Records do not store their blob's chunk size; a blob sealed with a valid non-default one
    (an older default, another writer) is intact and must not be quarantined as damaged."""
    from vault.ids import decode_id
    from vault.store.format import BlobHeader
    from vault.store.sealer import seal_bytes

    config = make_config(tmp_path / "data")
    vault = await open_vault(config)
    data = random_image(150_000, 4)
    record_id = await store(vault, data)
    rid = decode_id(record_id)
    dek = (await vault.context.data_keys.unwrap([rid]))[rid]
    blob_file(vault, record_id).write_bytes(seal_bytes(dek, rid, data, header=BlobHeader.new(rid, chunk_exp=12)))
    await vault.close()

    vault = await Vault.open(config, daemon=True)
    try:
        assert vault.recovery.damaged_quarantined == []
        assert await read(vault, record_id) == data
    finally:
        await vault.close()


async def test_a_second_daemon_on_the_same_data_dir_is_refused(tmp_path):
    config = make_config(tmp_path / "data")
    await (await open_vault(config)).close()
    first = await Vault.open(config, daemon=True)
    try:
        from vault.errors import IndexUnavailable

        with pytest.raises(IndexUnavailable, match="another imagevault daemon"):
            await Vault.open(config, daemon=True)
    finally:
        await first.close()


async def test_scrub_reports_bit_rot_by_record_id(service):
    ids = [await store(service, random_image(70_000 + i, i)) for i in range(5)]
    path = blob_file(service, ids[2])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    path.write_bytes(bytes(raw))
    blob_file(service, ids[4]).unlink()
    seen = []
    report = await service.verify_blobs(OPERATOR, progress=lambda done, total: seen.append((done, total)))
    assert report.checked == 5
    assert report.corrupt == [ids[2]]
    assert report.missing == [ids[4]]
    assert not report.ok
    assert seen[-1] == (5, 5)
    metrics = service.metrics.render().decode()
    assert "imagevault_scrub_corrupt_blobs 2.0" in metrics
    sample = await service.verify_blobs(OPERATOR, sample=2)
    assert sample.checked == 2


def test_verify_cli_exits_non_zero_on_corruption(tmp_path):
    from tests.test_daemon import cli

    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    config = make_config(data_dir)

    async def seed():
        vault = await Vault.open(config)
        record_id = await store(vault, random_image(90_000, 9))
        await vault.close()
        return record_id

    record_id = asyncio.run(seed())
    ok = cli(data_dir, "verify", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    path = data_dir / "blobs" / record_id[-2:].lower() / f"{record_id}.ivb"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    bad = cli(data_dir, "verify", "--json", check=False)
    assert bad.returncode != 0
    assert json.loads(bad.stdout)["corrupt"] == [record_id]


async def test_backup_during_load_then_restore_reads_back_every_record(tmp_path):
    config = make_config(tmp_path / "data")
    vault = await open_vault(config)
    contents: dict[str, bytes] = {}
    for i in range(40):
        data = random_image(1000 * i + 100, i)
        contents[await store(vault, data)] = data

    async def load():
        for i in range(40, 120):
            data = random_image(500 + i, i)
            contents[await store(vault, data)] = data

    escrow = await make_escrow(vault)
    loader = asyncio.ensure_future(load())
    report = await vault.backup(OPERATOR, tmp_path / "backup")
    await loader
    await vault.close()
    assert report.records >= 40 and not report.shredded_during_backup

    target = make_config(tmp_path / "restored")
    restored_report = await Vault.restore(OPERATOR, target, tmp_path / "backup", escrow=escrow,
                                          escrow_passphrase=ESCROW_PASSPHRASE)
    assert restored_report.records == report.records
    assert restored_report.blobs_restored == report.records
    restored = await Vault.open(target)
    try:
        ids = restored.index.read(lambda t: [encode_id(r) for r in t.iter_record_ids()])
        assert len(ids) == report.records
        for record_id in ids:
            assert await read(restored, record_id) == contents[record_id]
        assert (await restored.verify_blobs(OPERATOR)).ok
        verified = restored.audit.verify()
        assert verified.ok and verified.entries >= 40
    finally:
        await restored.close()


async def test_second_backup_is_incremental(tmp_path, service):
    for i in range(10):
        await store(service, random_image(5000, i))
    await make_escrow(service)
    first = await service.backup(OPERATOR, tmp_path / "b")
    await store(service, jpeg(b"one more"))
    second = await service.backup(OPERATOR, tmp_path / "b")
    assert first.blobs_copied == 10
    assert second.blobs_copied == 1 and second.blobs_already_present == 10
    assert len(snapshots(tmp_path / "b")) == 2


async def test_records_erased_after_a_backup_stay_erased_after_restore(tmp_path):
    import shutil

    config = make_config(tmp_path / "data")
    vault = await open_vault(config)
    # Expired at upload: only the dpo may set such a date.
    keep = await store(vault, jpeg(b"keep me"), principal=DPO, retention={"class": "until", "until": "2020-01-01"})
    erase = await store(vault, jpeg(b"erase me"), principal=DPO, retention={"class": "until", "until": "2020-01-01"})
    await make_escrow(vault)
    old = await vault.backup(OPERATOR, tmp_path / "b")
    stolen = tmp_path / "stolen-copy"
    shutil.copytree(tmp_path / "b", stolen)  # somebody kept a copy of the old backup
    await vault.shred_record(CLINICIAN, erase)
    # The shred epoch: rotate, rewrap, retire; the old snapshot's wrapped keys are now dead.
    await vault.run_epoch(OPERATOR)
    with pytest.raises(Exception, match="escrow"):
        await vault.backup(OPERATOR, tmp_path / "b")  # the escrow predates the epoch
    escrow = await make_escrow(vault)
    new = await vault.backup(OPERATOR, tmp_path / "b")
    await vault.close()
    assert new.snapshots_removed == [old.snapshot] and new.blobs_removed == 1
    assert not list((tmp_path / "b").rglob(f"{erase}.ivb"))

    # Newest snapshot: the erased record is not in the index; its old blob copy is gone.
    first = make_config(tmp_path / "r1")
    report = await Vault.restore(OPERATOR, first, tmp_path / "b", escrow=escrow, escrow_passphrase=ESCROW_PASSPHRASE)
    assert report.records == 1
    restored = await Vault.open(first)
    try:
        assert await read(restored, keep) == jpeg(b"keep me")
        from vault.errors import NotFound

        with pytest.raises(NotFound):
            await read(restored, erase)
        assert not list(restored.config.blobs_dir.rglob(f"{erase}.ivb"))
    finally:
        await restored.close()

    # The OLD snapshot (which still lists the record), from the copy, with the current escrow:
    # every wrapped key in it was made under a KEK version destroyed since.
    second = make_config(tmp_path / "r2")
    from vault.errors import ImageVaultError

    with pytest.raises(ImageVaultError, match="shred epoch"):
        await Vault.restore(OPERATOR, second, stolen, snapshot=old.snapshot, escrow=escrow,
                            escrow_passphrase=ESCROW_PASSPHRASE)
    assert list(second.data_dir.iterdir()) == []


async def test_restore_refuses_a_non_empty_data_dir_and_a_tampered_snapshot(tmp_path, service):
    await store(service, jpeg(b"x"))
    escrow = await make_escrow(service)
    report = await service.backup(OPERATOR, tmp_path / "b")
    from vault.errors import ImageVaultError, InvalidRequest

    with pytest.raises(InvalidRequest):
        await Vault.restore(OPERATOR, service.config, tmp_path / "b", escrow=escrow, escrow_passphrase=ESCROW_PASSPHRASE)
    index_file = tmp_path / "b" / "snapshots" / report.snapshot / "index" / "data.mdb"
    with open(index_file, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff")
    with pytest.raises(ImageVaultError, match="checksum"):
        await Vault.restore(OPERATOR, make_config(tmp_path / "fresh"), tmp_path / "b", escrow=escrow,
                            escrow_passphrase=ESCROW_PASSPHRASE)


def test_backup_files_hold_no_patient_identifiers(tmp_path):
    from tests.conftest import PATIENT_IDS, files_under

    async def go():
        vault = await open_vault(make_config(tmp_path / "data"))
        for patient in PATIENT_IDS:
            await store(vault, jpeg(b"img"), patient_id=patient)
        await make_escrow(vault)
        await vault.backup(OPERATOR, tmp_path / "b")
        await vault.close()

    asyncio.run(go())
    master = (tmp_path / "data" / "keys" / "master.key").read_bytes()
    for path in files_under(tmp_path / "b"):
        content = path.read_bytes()
        for patient in PATIENT_IDS:
            assert patient.encode() not in content, path
        # No key material: no keyring file, and not the master key's bytes in any file.
        assert path.name not in ("keyring.json", "master.key") and master not in content, path
        assert path.stat().st_mode & 0o777 == 0o600, path
    for path in [tmp_path / "b", *(p for p in (tmp_path / "b").rglob("*") if p.is_dir())]:
        assert path.stat().st_mode & 0o777 == 0o700, path
    assert os.stat(tmp_path / "b").st_mode & 0o077 == 0


def test_audit_head_cli_and_witness_log_line(tmp_path):
    from tests.test_daemon import Daemon, cli

    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "t")
    head = json.loads(cli(data_dir, "audit", "head", "--json").stdout)
    assert head["seq"] >= 1 and len(head["head"]) == 64
    # No retention sweep: its start-up run appends an entry of its own, and whether the witness
    # publishes before or after it depends on which background job the loop runs first.
    daemon = Daemon(data_dir, tmp_path / "daemon.log",
                    env={"IMAGEVAULT_AUDIT_WITNESS_INTERVAL": "0.2", "IMAGEVAULT_SWEEP_INTERVAL": "0"})
    try:
        import urllib.request

        import time

        wanted = f'imagevault_audit_head_info{{hash="{head["head"]}",seq="{head["seq"]}"}} 1.0'
        deadline = time.monotonic() + 30  # the witness publishes on its timer, maybe just after start
        while wanted not in (metrics := urllib.request.urlopen(f"{daemon.url}/metrics").read().decode()):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
    finally:
        assert daemon.stop() == 0
    log = (tmp_path / "daemon.log").read_text()
    assert f"audit head seq={head['seq']} hash={head['head']}" in log
