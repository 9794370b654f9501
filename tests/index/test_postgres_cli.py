"""``imagevault index copy`` both ways and ``imagevault index upgrade``, as an operator runs them
(real CLI processes, a real PostgreSQL): everything arrives, the audit chain verifies with the
same head, the data directory switches engine, and the copy refuses while a daemon serves it."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import (
    PATIENT_IDS,
    make_config,
    open_vault,
    random_image,
    sample_metadata,
)
from tests.test_cli_ops import local_env, run
from vault.auth import Principal, Role
from vault.config import load_config
from vault.metadata import parse_metadata
from vault.search import SearchQuery
from vault.services.context import lock_data_dir

CLINICIAN = Principal("clinic-a", Role.CLINICIAN, "alice")


async def body_of(data: bytes):
    yield data


async def seed(config) -> list[str]:
    vault = await open_vault(config)
    try:
        ids = []
        for n, patient in enumerate(PATIENT_IDS):
            record = await vault.create_image(CLINICIAN, parse_metadata(sample_metadata(patient_id=patient)),
                                              "image/jpeg", body_of(random_image(5000, n)))
            ids.append(record.id)
        await vault.update_metadata(CLINICIAN, ids[0], {"lesion_id": "L-9"})
        return ids
    finally:
        await vault.close()


async def contents(config) -> tuple[list[bytes], list[str], int]:
    """Every image's bytes, a patient's timeline and the records count, through the service."""
    vault = await open_vault(config)
    try:
        page = await vault.search(CLINICIAN, SearchQuery(patient_id=PATIENT_IDS[0], limit=50))
        images = []
        for record in sorted((await vault.search(CLINICIAN, SearchQuery(limit=50))).items, key=lambda r: r.id):
            handle = await vault.open_image(CLINICIAN, record.id)
            images.append(b"".join([piece async for piece in handle.stream()]))
        count = vault.index.read(lambda t: t.count(b"records"))
        return images, sorted(r.id for r in page.items), count
    finally:
        await vault.close()


def test_index_copy_to_postgres_and_back_keeps_everything(tmp_path, postgres_dsn):
    data_dir = tmp_path / "data"
    assert run(data_dir, "init", env=local_env()).returncode == 0
    lmdb_config = make_config(data_dir)
    asyncio.run(seed(lmdb_config))
    before = asyncio.run(contents(lmdb_config))
    head = json.loads(run(data_dir, "audit", "head", "--json", env=local_env()).stdout)
    pg_env = {**local_env(), "IMAGEVAULT_POSTGRES_DSN": postgres_dsn}

    refused = run(data_dir, "index", "copy", "--to", "postgres", env=pg_env)
    assert refused.returncode == 1 and "--yes" in refused.stderr and "nothing changed" in refused.stderr
    held = lock_data_dir(load_config(data_dir=data_dir, environ={}))
    try:
        busy = run(data_dir, "index", "copy", "--to", "postgres", "--yes", env=pg_env)
        assert busy.returncode != 0 and "another imagevault daemon" in busy.stderr, busy.stderr
    finally:
        import os

        os.close(held)

    copied = run(data_dir, "index", "copy", "--to", "postgres", "--yes", "--json", env=pg_env)
    assert copied.returncode == 0, copied.stderr
    report = json.loads(copied.stdout)
    assert report["source"] == "lmdb" and report["target"] == "postgres" and report["keys"] > 20
    assert report["audit_head"] == head["head"] and report["audit_entries"] == head["seq"]
    assert postgres_dsn.split("@")[0].split(":")[-1] not in copied.stdout + copied.stderr  # no password shown

    # The data directory now belongs to postgres: lmdb is refused, postgres opens the copy.
    assert run(data_dir, "keys", "status", env=local_env()).returncode == 78
    on_pg = {**pg_env, "IMAGEVAULT_INDEX": "postgres"}
    verified = run(data_dir, "audit", "verify", "--json", env=on_pg)
    assert verified.returncode == 0 and json.loads(verified.stdout)["head"] == head["head"], verified.stderr
    for mode in ([], ["--json"]):
        upgraded = run(data_dir, "index", "upgrade", *mode, env=on_pg)
        assert upgraded.returncode == 0 and upgraded.stdout.strip(), upgraded.stderr
    assert json.loads(run(data_dir, "index", "upgrade", "--json", env=on_pg).stdout)["upgraded"] is False
    pg_config = make_config(data_dir, index_engine="postgres", postgres_dsn=postgres_dsn)
    assert asyncio.run(contents(pg_config)) == before
    asyncio.run(seed(pg_config))  # written on postgres, to travel back

    back = run(data_dir, "index", "copy", "--to", "lmdb", "--yes", env=on_pg)
    assert back.returncode == 0, back.stderr
    assert "copied from postgres to lmdb and verified" in back.stdout
    assert len(list(data_dir.glob("index.before-copy-*"))) == 1  # the old LMDB index kept aside
    images, timeline, count = asyncio.run(contents(lmdb_config))
    assert count == 2 * len(PATIENT_IDS) and len(timeline) == 2 and set(before[0]) <= set(images)
    assert json.loads(run(data_dir, "audit", "verify", "--json", env=local_env()).stdout)["ok"] is True
