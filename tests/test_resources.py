"""Resource exhaustion maps to clear answers: map growth, readers-full 503, upload cap 503, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from tests.conftest import (
    Api,
    jpeg,
    make_config,
    open_vault,
    random_image,
    sample_metadata,
    upload_body,
)
from tests.test_daemon import Daemon, cli
from vault.api.app import create_app


async def test_a_full_lmdb_map_grows_under_concurrent_uploads(aiohttp_client, tmp_path):
    config = make_config(tmp_path / "data", lmdb_map_size=256 * 1024)
    vault = await open_vault(config)
    try:
        api = Api(await aiohttp_client(create_app(config, vault=vault)), vault, {})
        records = await asyncio.gather(*(api.upload(jpeg(b"img %d" % i), sample_metadata(tags=[f"t{i}", "x" * 60])) for i in range(48)))
        for _ in range(5):
            await asyncio.gather(*(api.upload(jpeg(b"more"), sample_metadata(tags=["y" * 60])) for _ in range(48)))
        assert vault.index.grows >= 1
        assert vault.index.map_size > 256 * 1024
        assert vault.count_records() == 48 * 6
        response = await api.client.get(f"/v1/images/{records[0]['id']}", headers=await api.headers())
        assert response.status == 200
    finally:
        await vault.close()


async def test_lmdb_readers_full_is_503_not_500(aiohttp_client, tmp_path):
    config = make_config(tmp_path / "data", lmdb_max_readers=4)
    vault = await open_vault(config)
    try:
        api = Api(await aiohttp_client(create_app(config, vault=vault)), vault, {})
        headers = await api.headers()
        held = []
        import lmdb

        try:
            while True:  # every reader slot taken by long-running readers
                held.append(vault.index._env.begin())
        except lmdb.ReadersFullError:
            pass
        response = await api.client.post("/v1/search", json={}, headers=headers)
        assert response.status == 503
        body = await response.json()
        assert body["error"]["code"] == "index_unavailable"
        assert response.headers["Retry-After"]
        for txn in held:
            txn.abort()
        held.clear()  # py-lmdb frees a reader slot when the transaction object goes away
        response = await api.client.post("/v1/search", json={}, headers=headers)
        assert response.status == 200
    finally:
        await vault.close()


async def test_too_many_concurrent_uploads_get_503_with_retry_after(aiohttp_client, tmp_path):
    config = make_config(tmp_path / "data", max_concurrent_uploads=2)
    vault = await open_vault(config)
    try:
        api = Api(await aiohttp_client(create_app(config, vault=vault)), vault, {})
        headers = await api.headers()
        release = asyncio.Event()

        async def slow():
            # aiohttp's multipart reader looks ahead one read past a part's boundary, so send
            # a few pieces before stalling, as a real client streaming a large file would.
            for _ in range(4):
                yield jpeg(b"a" * 1000)
                await asyncio.sleep(0.01)
            await release.wait()
            yield b"b" * 1000

        pending = [asyncio.ensure_future(api.client.post("/v1/images", data=upload_body(slow(), sample_metadata()), headers=headers)) for _ in range(2)]
        for _ in range(100):
            if vault.records.uploads_in_flight == 2:
                break
            await asyncio.sleep(0.01)
        response = await api.client.post("/v1/images", data=upload_body(jpeg(b"third"), sample_metadata()), headers=headers)
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "overloaded"
        assert response.headers["Retry-After"] == "1"
        release.set()
        assert [r.status for r in await asyncio.gather(*pending)] == [201, 201]
        assert vault.count_records() == 2
    finally:
        await vault.close()


async def test_sigterm_finishes_in_flight_uploads_then_exits_zero(tmp_path):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "t").stdout.strip()
    daemon = Daemon(data_dir, tmp_path / "daemon.log")
    data = random_image(3 << 20)
    sent_half = asyncio.Event()

    async def slow():
        yield data[: len(data) // 2]
        sent_half.set()
        await asyncio.sleep(1.0)
        yield data[len(data) // 2:]

    async with aiohttp.ClientSession() as session:
        upload = asyncio.ensure_future(session.post(
            f"{daemon.url}/v1/images", data=upload_body(slow(), sample_metadata()),
            headers={"Authorization": f"Bearer {token}"},
        ))
        await sent_half.wait()
        await asyncio.sleep(0.2)
        daemon.process.send_signal(signal.SIGTERM)
        response = await upload
        assert response.status == 201
        record = await response.json()
    code = await asyncio.to_thread(daemon.process.wait, 30)
    daemon.log.close()
    assert code == 0
    daemon = Daemon(data_dir, tmp_path / "daemon2.log")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{daemon.url}/v1/images/{record['id']}", headers={"Authorization": f"Bearer {token}"}) as response:
                assert await response.read() == data
    finally:
        assert daemon.stop() == 0
