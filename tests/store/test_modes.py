"""File modes under the data directory do not depend on the umask; looser ones are tightened at start."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from tests.conftest import make_config, open_vault, random_image, sample_metadata
from vault.auth import Principal, Role
from vault.ids import encode_id, new_record_id
from vault.metadata import parse_metadata
from vault.service import Vault

CLINICIAN = Principal("clinic-a", Role.CLINICIAN, "t")


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def permissive_umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


async def _one_image(vault: Vault) -> str:
    async def body():
        yield random_image(50_000, 7)

    record = await vault.create_image(CLINICIAN, parse_metadata(sample_metadata()), "image/jpeg", body())
    return record.id


async def test_blob_directories_blobs_and_quarantined_blobs_are_private_whatever_the_umask(tmp_path, permissive_umask):
    config = make_config(tmp_path / "data")
    vault = await open_vault(config)
    record_id = await _one_image(vault)
    orphan = encode_id(new_record_id())
    writer = await vault.backend.open_writer(orphan)
    await writer.write(b"ciphertext of an upload that never reached the index")
    await writer.commit()
    await vault.close()
    vault = await Vault.open(config, daemon=True)  # start-up recovery quarantines the orphan
    await vault.close()
    blobs = config.blobs_dir
    assert mode(config.data_dir) == 0o700
    assert mode(blobs) == 0o700
    for directory in [p for p in blobs.rglob("*") if p.is_dir()] + [config.quarantine_dir]:
        assert mode(directory) == 0o700, directory
    blob = blobs / record_id[-2:].lower() / f"{record_id}.ivb"
    quarantined = config.quarantine_dir / f"{orphan}.ivb"
    assert quarantined.exists()
    for path in (blob, quarantined, *config.index_dir.iterdir()):
        assert mode(path) == 0o600, path


async def test_looser_modes_are_tightened_at_start_and_logged_once(tmp_path, caplog):
    config = make_config(tmp_path / "data")
    vault = await open_vault(config)
    record_id = await _one_image(vault)
    await vault.close()
    shard = config.blobs_dir / record_id[-2:].lower()
    config.quarantine_dir.mkdir()
    stray = config.quarantine_dir / "old.ivb"
    stray.write_bytes(b"x")
    for path, loose in ((config.data_dir, 0o755), (config.blobs_dir, 0o755), (shard, 0o775),
                        (config.blobs_dir / "tmp", 0o777), (config.quarantine_dir, 0o755), (stray, 0o644)):
        os.chmod(path, loose)
    caplog.set_level(logging.INFO)
    caplog.clear()
    vault = await Vault.open(config, daemon=True)
    await vault.close()
    for path in (config.data_dir, config.blobs_dir, shard, config.blobs_dir / "tmp", config.quarantine_dir):
        assert mode(path) == 0o700, path
    assert mode(stray) == 0o600
    notes = [r for r in caplog.records if "owner-only" in r.getMessage()]
    assert len(notes) == 1 and "6 path(s)" in notes[0].getMessage()
    caplog.clear()
    vault = await Vault.open(config, daemon=True)  # nothing left to tighten: nothing logged
    await vault.close()
    assert not [r for r in caplog.records if "owner-only" in r.getMessage()]
