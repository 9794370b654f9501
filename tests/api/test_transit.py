"""The whole service on a real OpenBao Transit engine: round trips, batching, rotation, outages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import hvac
import pytest

from tests.conftest import Api, jpeg, make_config, png, random_image, readyz_becomes, sample_metadata
from vault.api.app import create_app
from vault.auth import Principal, Role
from vault.errors import KeyMaterialError, KmsUnavailable
from vault.ids import decode_id
from vault.keys.transit import TransitConfig, TransitKeyProvider
from vault.service import Vault

ROOT = Path(__file__).resolve().parent.parent.parent
POLICY = (ROOT / "deploy" / "vault-policy.hcl").read_text()


async def transit_vault(tmp_path, addr: str, token: str, key: str, **config) -> Vault:
    cfg = make_config(tmp_path / "data", kms="transit", vault_addr=addr, vault_token=token, vault_key=key, **config)
    provider = TransitKeyProvider(
        TransitConfig(addr=addr, token=token, key_name=key, connect_timeout=1.0, read_timeout=2.0, retry_budget=3.0)
    )
    await provider.check()
    return await Vault.open(cfg, keys=provider)


@pytest.fixture
async def transit_api(aiohttp_client, tmp_path, openbao, transit_key):
    vault = await transit_vault(tmp_path, openbao.addr, openbao.root_token, transit_key)
    client = await aiohttp_client(create_app(vault.config, vault=vault))
    yield Api(client, vault, {})
    await vault.close()


async def test_round_trip_through_transit_wraps_with_vault_prefix(transit_api):
    data = random_image(200_000, seed=4)
    record = await transit_api.upload(data)
    wrapped = transit_api.service.index.read(lambda t: t.get_dek(decode_id(record["id"])))
    assert wrapped.startswith("vault:v1:")
    transit_api.service.dek_cache.clear()
    response = await transit_api.client.get(f"/v1/images/{record['id']}", headers=await transit_api.headers())
    assert await response.read() == data
    info = await (await transit_api.client.get("/v1/info")).json()
    assert info["kms_provider"] == "transit"


async def test_concurrent_uploads_share_transit_calls(transit_api):
    await transit_api.upload(jpeg(b"warm the tenant key"))
    provider = transit_api.service.keys
    before = provider.calls["encrypt"]
    results = await asyncio.gather(*(transit_api.upload(jpeg(b"img %d" % i)) for i in range(64)))
    assert len({r["id"] for r in results}) == 64
    calls = provider.calls["encrypt"] - before
    assert calls <= 2, f"{calls} Transit calls for 64 uploads: not batched"
    before = provider.calls["encrypt"]
    for i in range(200):  # one by one: the pre-wrapped pool still serves them
        await transit_api.upload(jpeg(b"sequential %d" % i))
    assert provider.calls["encrypt"] - before <= 2
    metrics = (await (await transit_api.client.get("/metrics")).read()).decode()
    assert 'imagevault_kms_calls_total{kind="encrypt"}' in metrics


async def test_rotate_rewrap_retire_on_transit_kills_old_wrapped_keys_and_keeps_images(transit_api, openbao, transit_key):
    images = {}
    for i in range(40):
        data = random_image(1000 + i, seed=i)
        images[(await transit_api.upload(data))["id"]] = data
    first = next(iter(images))
    saved_v1 = transit_api.service.index.read(lambda t: t.get_dek(decode_id(first)))
    operator = await transit_api.headers("admin")
    assert (await transit_api.client.post("/v1/admin/keys/rotate", headers=operator)).status == 202
    for _ in range(200):
        report = await (await transit_api.client.get("/v1/admin/keys", headers=operator)).json()
        if report["rewrap"]["state"] == "done":
            break
        await asyncio.sleep(0.05)
    assert report["dek_counts"] == {"2": 40}
    response = await transit_api.client.post("/v1/admin/keys/retire", headers=operator)
    assert response.status == 200, await response.text()
    # OpenBao itself now refuses the old ciphertext.
    with pytest.raises(hvac.exceptions.InvalidRequest):
        openbao.client().secrets.transit.decrypt_data(transit_key, ciphertext=saved_v1)
    with pytest.raises(KeyMaterialError):
        await transit_api.service.keys.unwrap_data_key(saved_v1)
    transit_api.service.dek_cache.clear()
    for rid, data in images.items():
        response = await transit_api.client.get(f"/v1/images/{rid}", headers=await transit_api.headers())
        assert await response.read() == data


async def test_paused_kms_gives_fast_503_stores_nothing_and_recovers_by_itself(aiohttp_client, tmp_path, private_openbao):
    private_openbao.create_key("imagevault-kek")
    vault = await transit_vault(tmp_path, private_openbao.addr, private_openbao.root_token, "imagevault-kek")
    try:
        api = Api(await aiohttp_client(create_app(vault.config, vault=vault)), vault, {})
        cached = await api.upload(jpeg(b"cached image"))
        private_openbao.pause()
        try:
            # The first KMS failure (here the readiness probe's) discards pre-wrapped keys.
            ready = await readyz_becomes(api.client, 503)
            assert ready.status == 503
            assert "kms" in (await ready.json())["error"]["message"]
            started = time.monotonic()
            status, body = await api.upload(random_image(300_000), expect=None)
            assert status == 503 and body["error"]["code"] == "kms_unavailable"
            assert time.monotonic() - started < 10
            assert vault.count_records() == 1
            blobs = [p for p in vault.config.blobs_dir.rglob("*") if p.is_file()]
            assert len(blobs) == 1  # only the cached image's blob
            # A read whose DEK is cached keeps working while the KMS is away.
            response = await api.client.get(f"/v1/images/{cached['id']}", headers=await api.headers())
            assert await response.read() == jpeg(b"cached image")
            ready = await api.client.get("/readyz")
            assert ready.status == 503
            assert "kms" in (await ready.json())["error"]["message"]
        finally:
            private_openbao.resume()
        # Recovery needs no restart; allow the resumed server a moment to answer again.
        for _ in range(40):
            status, record = await api.upload(jpeg(b"after the outage"), expect=None)
            if status == 201:
                break
            await asyncio.sleep(0.25)
        assert status == 201 and record["key_version"] == 1
        assert (await readyz_becomes(api.client, 200)).status == 200
        metrics = (await (await api.client.get("/metrics")).read()).decode()
        assert "imagevault_kms_errors_total" in metrics
    finally:
        await vault.close()


async def test_killed_kms_gives_503_with_retry_after_and_uploads_resume_after_restart(aiohttp_client, tmp_path, private_openbao):
    private_openbao.create_key("imagevault-kek")
    vault = await transit_vault(tmp_path, private_openbao.addr, private_openbao.root_token, "imagevault-kek")
    try:
        api = Api(await aiohttp_client(create_app(vault.config, vault=vault)), vault, {})
        await api.upload(jpeg(b"before"))
        private_openbao.stop()
        assert (await readyz_becomes(api.client, 503)).status == 503
        response = await api.client.post(
            "/v1/images", data=__import__("tests.conftest", fromlist=["upload_body"]).upload_body(jpeg(b"during"), sample_metadata()),
            headers=await api.headers(),
        )
        assert response.status == 503
        assert response.headers["Retry-After"]
        assert vault.count_records() == 1
        private_openbao.start()  # dev mode: empty again; the operator re-creates the key
        private_openbao.create_key("imagevault-kek")
        record = await api.upload(jpeg(b"after"))
        assert record["key_version"] == 1
        assert vault.count_records() == 2
    finally:
        await vault.close()


async def test_minimal_policy_serves_uploads_and_reads(aiohttp_client, tmp_path, private_openbao):
    private_openbao.create_key("imagevault-kek")
    root = private_openbao.client()
    root.sys.create_or_update_policy("imagevault", POLICY)
    token = root.auth.token.create(policies=["imagevault"], ttl="1h")["auth"]["client_token"]
    vault = await transit_vault(tmp_path, private_openbao.addr, token, "imagevault-kek")
    try:
        api = Api(await aiohttp_client(create_app(vault.config, vault=vault)), vault, {})
        record = await api.upload(jpeg(b"least privilege"))
        vault.dek_cache.clear()
        response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
        assert await response.read() == jpeg(b"least privilege")
    finally:
        await vault.close()


def test_wrong_token_is_a_clear_startup_error(tmp_path, openbao, transit_key):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMAGEVAULT_DATA_DIR": str(tmp_path / "data"),
           "IMAGEVAULT_KMS": "transit", "IMAGEVAULT_VAULT_ADDR": openbao.addr,
           "IMAGEVAULT_VAULT_TOKEN": "hvs.not-a-real-token", "IMAGEVAULT_VAULT_KEY": transit_key}
    result = subprocess.run([sys.executable, "-m", "vault.cli", "init"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "token" in result.stderr.lower() or "permission" in result.stderr.lower()
    assert "hvs.not-a-real-token" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


async def test_rewrap_resumes_after_the_daemon_is_killed_mid_way(tmp_path, openbao, transit_key):
    import os
    import signal

    from tests.test_daemon import Daemon, cli
    from vault.index.lmdb import Index

    env = {"IMAGEVAULT_KMS": "transit", "IMAGEVAULT_VAULT_ADDR": openbao.addr,
           "IMAGEVAULT_VAULT_TOKEN": openbao.root_token, "IMAGEVAULT_VAULT_KEY": transit_key,
           "IMAGEVAULT_REWRAP_BATCH": "8", "IMAGEVAULT_REWRAP_PAUSE": "0.05"}
    os.environ.update(env)
    try:
        data_dir = tmp_path / "data"
        cli(data_dir, "init")
        vault = await transit_vault(tmp_path, openbao.addr, openbao.root_token, transit_key)
        clinician = Principal("clinic-a", Role.CLINICIAN, "t")
        from vault.metadata import parse_metadata

        async def one(i):
            async def body():
                yield png(b"image %d" % i)
            await vault.create_image(clinician, parse_metadata(sample_metadata()), "image/png", body())

        for start in range(0, 160, 32):  # under the concurrent-upload cap
            await asyncio.gather(*(one(i) for i in range(start, start + 32)))
        await vault.rotate_keys(Principal("-", Role.ADMIN, "t"), background=False)
        await vault.close()

        daemon = Daemon(data_dir, tmp_path / "d1.log")  # resumes the running job at start-up
        index = Index(data_dir / "index", map_size=16 << 20)
        try:
            for _ in range(400):
                job = index.read(lambda t: t.get_doc(b"jobs", b"rewrap"))
                if job and job.get("rewrapped", 0) >= 16:
                    break
                await asyncio.sleep(0.02)
            daemon.process.send_signal(signal.SIGKILL)
            daemon.process.wait()
            daemon.log.close()
            job = index.read(lambda t: t.get_doc(b"jobs", b"rewrap"))
            assert job["state"] == "running" and 16 <= job["rewrapped"] < 160
        finally:
            index.close()
        daemon = Daemon(data_dir, tmp_path / "d2.log")
        try:
            index = Index(data_dir / "index", map_size=16 << 20)
            try:
                for _ in range(600):
                    job = index.read(lambda t: t.get_doc(b"jobs", b"rewrap"))
                    if job["state"] == "done":
                        break
                    await asyncio.sleep(0.05)
                assert job["state"] == "done" and job["rewrapped"] == 160
                versions = index.read(lambda t: {w.split(":")[1] for _, w in t.iter_deks()})
                assert versions == {"v2"}
            finally:
                index.close()
        finally:
            assert daemon.stop() == 0
    finally:
        for key in env:
            os.environ.pop(key, None)


async def test_a_key_unwrapped_while_its_record_is_shredded_is_not_cached(aiohttp_client, tmp_path, private_openbao):
    """A read already waiting on Transit when the record is shredded must not put the key back
    into the DEK cache afterwards (it would outlive the erasure in memory for the cache TTL)."""
    private_openbao.create_key("imagevault-kek")
    vault = await transit_vault(tmp_path, private_openbao.addr, private_openbao.root_token, "imagevault-kek")
    try:
        api = Api(await aiohttp_client(create_app(vault.config, vault=vault)), vault, {})
        expired = sample_metadata(retention={"class": "until", "until": "2020-01-01"})  # the dpo's to set
        record = await api.upload(jpeg(b"to be erased"), expired, role="dpo")
        other = await api.upload(jpeg(b"kept"), expired, role="dpo")
        rid = decode_id(record["id"])
        vault.dek_cache.clear()  # the upload cached its key: the read below must unwrap
        clinician = Principal("clinic-a", Role.CLINICIAN, "t")
        private_openbao.pause()
        try:
            read = asyncio.ensure_future(vault.open_image(clinician, record["id"]))
            await asyncio.sleep(0.3)  # the read is now waiting on the paused KMS
            assert not read.done()
            result = await vault.shred_record(clinician, record["id"])
            assert result.shredded
        finally:
            private_openbao.resume()
        await read  # ordered before the erasure, it may finish; its key must not be kept
        assert vault.dek_cache.get(rid) is None
        # Reads that start after the erasure still cache their keys.
        await vault.open_image(clinician, other["id"])
        assert vault.dek_cache.get(decode_id(other["id"])) is not None
    finally:
        await vault.close()


async def test_a_lone_miss_unwraps_the_records_that_follow_in_the_same_call(transit_api):
    """Each worker of `serve --workers` has its own DEK cache, so an image uploaded through one
    and read through another misses there. The first such read unwraps the keys of the records
    that follow it in one Transit call; their reads then need none. Concurrent misses of keys
    that one call is already unwrapping wait for it instead of making their own."""
    service, provider = transit_api.service, transit_api.service.keys
    expired = sample_metadata(retention={"class": "until", "until": "2020-01-01"})  # so one may be shredded
    records = [await transit_api.upload(jpeg(b"session image %d" % i), expired, role="dpo") for i in range(12)]
    rids = [decode_id(r["id"]) for r in records]
    shredded = records[5]["id"]
    clinician = Principal("clinic-a", Role.CLINICIAN, "t")
    assert (await service.shred_record(clinician, shredded)).shredded
    service.dek_cache.clear()  # as the other worker's cache: none of these keys

    before = provider.calls["decrypt"]
    await service.open_image(clinician, records[0]["id"])
    assert provider.calls["decrypt"] - before == 1
    assert all(service.dek_cache.peek(rid) for i, rid in enumerate(rids) if i != 5)
    assert not service.dek_cache.peek(rids[5])  # its key is gone from the index: nothing to read ahead
    for record in records[1:5] + records[6:]:
        response = await transit_api.client.get(f"/v1/images/{record['id']}", headers=await transit_api.headers())
        assert response.status == 200
    assert provider.calls["decrypt"] - before == 1

    service.dek_cache.clear()
    before = provider.calls["decrypt"]
    opened = await asyncio.gather(*(service.open_image(clinician, r["id"]) for r in records[6:]))
    assert len(opened) == 6
    assert provider.calls["decrypt"] - before == 1


async def test_the_local_keyring_reads_no_keys_ahead(tmp_path):
    from tests.conftest import create_many, open_vault

    service = await open_vault(make_config(tmp_path / "data"))
    try:
        ids = await create_many(service, 3, sample_metadata())
        service.dek_cache.clear()
        await service.open_image(Principal("clinic-a", Role.CLINICIAN, "t"), ids[0])
        assert service.dek_cache.peek(decode_id(ids[0]))
        assert not any(service.dek_cache.peek(decode_id(i)) for i in ids[1:])
    finally:
        await service.close()


async def test_the_readiness_probe_rides_on_recent_answers_and_checks_after_a_failure(tmp_path, private_openbao):
    """A request Transit answered within the probe interval is the probe's answer (no read_key
    per worker every few seconds under traffic); idle, or after any failure, it checks."""
    private_openbao.create_key("imagevault-kek")
    vault = await transit_vault(tmp_path, private_openbao.addr, private_openbao.root_token, "imagevault-kek")
    try:
        provider = vault.keys
        await provider.wrap_data_keys([bytes(32)])
        before = provider.calls["read_key"]
        await provider.probe(60.0)
        assert provider.calls["read_key"] == before  # the wrap just answered
        await provider.probe(0.0)
        assert provider.calls["read_key"] == before + 1  # nothing recent enough: a real check
        private_openbao.pause()
        try:
            with pytest.raises(KmsUnavailable):
                await provider.wrap_data_keys([bytes(32)])
            with pytest.raises(KmsUnavailable):  # a failure since the last answer: checks, and fails
                await provider.probe(60.0)
        finally:
            private_openbao.resume()
    finally:
        await vault.close()
