"""``gc`` removes orphan blobs (no record points at them) and nothing else, on both stores.

Orphans are made the way a crash makes them: a blob written and committed through the backend
with no index record. Their ids carry their creation time, so an "old" orphan is one whose id
was minted an hour and more ago.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from tests.conftest import (
    jpeg,
    make_config,
    open_vault,
    random_image,
    s3_settings,
    sample_metadata,
)
from tests.infra.blobs import open_raw_blobs
from tests.infra.daemon import cli
from vault.auth import Principal, Role
from vault.errors import Forbidden
from vault.ids import encode_id, new_record_id
from vault.metadata import parse_metadata

OPERATOR = Principal("-", Role.ADMIN, "test")
CLINICIAN = Principal("clinic-a", Role.CLINICIAN, "test")


async def write_orphan(service, age: timedelta, data: bytes = b"orphaned ciphertext") -> str:
    blob_id = encode_id(new_record_id(time.time() - age.total_seconds()))
    writer = await service.backend.open_writer(blob_id)
    await writer.write(data)
    await writer.commit()
    return blob_id


async def stored_ids(service) -> list[str]:
    return sorted([blob_id async for blob_id in service.backend.list_ids()])


async def create_records(service, count: int) -> dict[str, bytes]:
    images = {}
    for n in range(count):
        data = random_image(1000 + n, seed=n)

        async def body(data=data):
            yield data

        record = await service.create_image(CLINICIAN, parse_metadata(sample_metadata()), "image/jpeg", body())
        images[record.id] = data
    return images


async def test_gc_removes_exactly_the_old_orphans_and_keeps_every_recorded_blob(service, api):
    images = await create_records(service, 3)
    old = [await write_orphan(service, timedelta(hours=h)) for h in (2, 30)]
    recent = await write_orphan(service, timedelta(minutes=5))
    progress: list[tuple[int, int | None]] = []

    result = await service.collect_garbage(OPERATOR, progress=lambda done, total: progress.append((done, total)))

    assert result.to_json() == {"scanned": 6, "removed": 2, "kept_recent": 1, "temporary": 0}
    assert await stored_ids(service) == sorted([*images, recent])
    assert progress[-1] == (6, 6)
    for record_id, data in images.items():
        response = await api.client.get(f"/v1/images/{record_id}", headers=await api.headers())
        assert response.status == 200
        assert await response.read() == data
    remaining = await stored_ids(service)
    assert not set(old) & set(remaining)


async def test_gc_with_no_age_limit_still_never_touches_a_blob_with_a_record(service, api):
    images = await create_records(service, 4)
    orphan = await write_orphan(service, timedelta(0))
    result = await service.collect_garbage(OPERATOR, min_age=timedelta(0))
    assert (result.scanned, result.removed, result.kept_recent) == (5, 1, 0)
    assert await stored_ids(service) == sorted(images)
    assert orphan not in await stored_ids(service)
    # Nothing left to do: a second run removes nothing.
    assert (await service.collect_garbage(OPERATOR, min_age=timedelta(0))).removed == 0


async def test_gc_finishes_the_blob_delete_of_a_shred(service, api):
    record = await api.upload(jpeg(b"img"), sample_metadata(retention={"class": "until", "until": "2020-01-01"}), role="dpo")
    async with open_raw_blobs(service.config) as raw:
        blob = await raw.read(record["id"])
        response = await api.client.delete(f"/v1/images/{record['id']}", headers=await api.headers())
        assert response.status == 200
        await raw.write(record["id"], blob)  # as if the best-effort delete had failed
    result = await service.collect_garbage(OPERATOR, min_age=timedelta(0))
    assert result.removed == 1
    assert await stored_ids(service) == []


async def test_gc_leaves_what_imagevault_did_not_write(service):
    async with open_raw_blobs(service.config) as raw:
        if service.config.store == "s3":
            await raw.client.put_object(Bucket=raw.bucket, Key="blobs/README", Body=b"not ours")
            await raw.client.put_object(Bucket=raw.bucket, Key="elsewhere/" + encode_id(new_record_id(0)), Body=b"x")
        else:
            (service.config.blobs_dir / "README").write_bytes(b"not ours")
        result = await service.collect_garbage(OPERATOR, min_age=timedelta(0))
        assert (result.scanned, result.removed) == (0, 0)
        names = [name for name, _ in await raw.everything()]
        assert any(name.endswith("README") for name in names)


async def test_gc_is_for_operators_only(service):
    with pytest.raises(Forbidden):
        await service.collect_garbage(CLINICIAN)


async def test_gc_command_prints_counts_and_shows_progress_on_stderr(tmp_path, store, request):
    overrides, env = {}, {}
    if store == "s3":
        seaweed = request.getfixturevalue("seaweed")
        bucket = request.getfixturevalue("new_bucket")(seaweed)
        overrides, env = s3_settings(seaweed, bucket), seaweed.environment(bucket)
    config = make_config(tmp_path / "data", **overrides)
    assert cli(config.data_dir, "init", env=env).returncode == 0
    vault = await open_vault(config)
    try:
        images = await create_records(vault, 2)
        old = await write_orphan(vault, timedelta(hours=3))
        recent = await write_orphan(vault, timedelta(minutes=1))
    finally:
        await vault.close()

    dry = cli(config.data_dir, "gc", "--dry-run", env=env)
    assert "1 orphan(s) would be removed, 1 recent orphan(s) kept" in dry.stdout
    done = cli(config.data_dir, "gc", "--yes", "--json", env=env)
    assert json.loads(done.stdout) == {"scanned": 4, "removed": 1, "kept_recent": 1, "temporary": 0}
    again = cli(config.data_dir, "gc", "--min-age", "30s", "--yes", "--json", env=env)
    assert json.loads(again.stdout)["removed"] == 1
    vault = await open_vault(config)
    try:
        assert await stored_ids(vault) == sorted(images)
        assert old not in await stored_ids(vault) and recent not in await stored_ids(vault)
    finally:
        await vault.close()
    bad = cli(config.data_dir, "gc", "--min-age", "soon", env=env, check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1
