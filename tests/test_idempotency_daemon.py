"""Idempotency keys across restarts of the real daemon: a replay after SIGTERM and a restart, and a
key whose request was in progress when the daemon was killed is free afterwards (the in-flight
hold is in memory only; nothing was committed)."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import jpeg, sample_metadata, upload_body
from tests.infra.daemon import Daemon, cli

KEY = '"0b5e0f43-25a4-4f0a-a0b9-4f4a5a3c2d11"'


async def _upload(url: str, headers: dict[str, str], data) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.post(f"{url}/v1/images", data=upload_body(data, sample_metadata()), headers=headers) as r:
            return r.status, dict(r.headers), await r.json()


async def test_a_key_survives_a_restart_and_a_key_in_flight_at_a_crash_is_free_after_it(tmp_path):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "camera").stdout.strip()
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": KEY}
    image = jpeg(b"lesion" * 1000)

    daemon = Daemon(data_dir, tmp_path / "daemon-1.log")
    try:
        status, _, record = await _upload(daemon.url, headers, image)
        assert status == 201
    finally:
        assert daemon.stop() == 0
    daemon = Daemon(data_dir, tmp_path / "daemon-2.log")
    try:
        status, seen, replayed = await _upload(daemon.url, headers, image)
        assert status == 201 and seen["Idempotent-Replayed"] == "true" and replayed["id"] == record["id"]

        # A second key, its upload cut off by a crash of the daemon mid-body.
        other = {**headers, "Idempotency-Key": '"crash-during-upload"'}
        gate = asyncio.Event()
        head = jpeg(bytes(1 << 20))

        async def stalled():
            yield head
            await gate.wait()
            yield b"never sent"

        pending = asyncio.ensure_future(_upload(daemon.url, other, stalled()))
        await asyncio.sleep(1.0)
        daemon.process.kill()
        daemon.stop()
        gate.set()
        try:
            await pending
        except aiohttp.ClientError:
            pass
    finally:
        daemon.stop()
    daemon = Daemon(data_dir, tmp_path / "daemon-3.log")
    try:
        status, seen, fresh = await _upload(daemon.url, other, head + b"complete")
        assert status == 201, fresh
        assert "Idempotent-Replayed" not in seen and fresh["id"] != record["id"]
        status, seen, again = await _upload(daemon.url, other, head + b"complete")
        assert status == 201 and seen["Idempotent-Replayed"] == "true" and again["id"] == fresh["id"]
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{daemon.url}/v1/search", json={"session_id": sample_metadata()["session_id"]},
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                found = await r.json()
        assert sorted(item["id"] for item in found["items"]) == sorted([record["id"], fresh["id"]])
    finally:
        assert daemon.stop() == 0
