"""The shred epoch run from the command line while a real daemon serves uploads, on the local
keyring and on OpenBao Transit (daemon with its least-privilege policy, the CLI with the
operator's): every upload acknowledged with 201 reads back byte-identical after a restart, and
the destroyed key versions are gone at the KMS."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import aiohttp

from tests.conftest import PATIENT_IDS, random_image, sample_metadata, upload_body
from tests.infra.daemon import Daemon, cli

ROOT = Path(__file__).resolve().parent.parent


async def upload_until(url: str, token: str, stop: threading.Event, acknowledged: dict[str, bytes]) -> int:
    """Upload small images until ``stop``; record every 201; return how many were refused."""
    refused = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        n = 0
        while not stop.is_set() or n < 10:
            data = random_image(3000 + n, n)
            meta = sample_metadata(patient_id=PATIENT_IDS[n % 3])
            async with session.post(f"{url}/v1/images", data=upload_body(data, meta), headers=headers) as response:
                if response.status == 201:
                    acknowledged[(await response.json())["id"]] = data
                else:
                    refused += 1
            n += 1
    return refused


async def check_everything_reads_back(url: str, token: str, acknowledged: dict[str, bytes]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        for record_id, data in acknowledged.items():
            async with session.get(f"{url}/v1/images/{record_id}", headers=headers) as response:
                assert response.status == 200, record_id
                assert await response.read() == data
        found: set[str] = set()
        for patient in PATIENT_IDS:
            async with session.post(f"{url}/v1/search", json={"patient_id": patient, "limit": 1000}, headers=headers) as response:
                found.update(item["id"] for item in (await response.json())["items"])
        assert found == set(acknowledged)


async def race_epoch_with_uploads(data_dir: Path, tmp_path: Path, daemon_env: dict[str, str],
                                  cli_env: dict[str, str]) -> dict:
    token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "cam",
                env=daemon_env).stdout.strip()
    daemon = Daemon(data_dir, tmp_path / "daemon.log", env=daemon_env)
    acknowledged: dict[str, bytes] = {}
    stop = threading.Event()
    try:
        uploads = asyncio.ensure_future(upload_until(daemon.url, token, stop, acknowledged))
        while len(acknowledged) < 5:
            await asyncio.sleep(0.05)
        epoch = await asyncio.to_thread(cli, data_dir, "keys", "epoch", "--yes", "--json", env=cli_env, timeout=120)
        stop.set()
        refused = await uploads
        assert refused == 0
    finally:
        stop.set()
        assert daemon.stop() == 0
    state = json.loads(epoch.stdout)
    assert state["state"] == "done" and state["number"] == 1
    daemon = Daemon(data_dir, tmp_path / "daemon2.log", env=daemon_env)
    try:
        await check_everything_reads_back(daemon.url, token, acknowledged)
    finally:
        daemon.stop()
    status = json.loads(cli(data_dir, "keys", "status", "--json", env=cli_env).stdout)
    assert status["versions"] == [2] and set(status["dek_counts"]) == {"2"}
    assert status["shred_epoch"]["last_number"] == 1
    return status


async def test_cli_epoch_while_the_daemon_serves_local_keyring(tmp_path):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    await race_epoch_with_uploads(data_dir, tmp_path, {}, {})


async def test_cli_epoch_while_the_daemon_serves_transit(tmp_path, private_openbao):
    private_openbao.create_key("imagevault-kek")
    root = private_openbao.client()
    root.sys.create_or_update_policy("imagevault", (ROOT / "deploy" / "vault-policy.hcl").read_text())
    root.sys.create_or_update_policy("imagevault-operator", (ROOT / "deploy" / "vault-operator-policy.hcl").read_text())
    daemon_token = root.auth.token.create(policies=["imagevault"], ttl="1h")["auth"]["client_token"]
    operator_token = root.auth.token.create(policies=["imagevault", "imagevault-operator"], ttl="1h")["auth"]["client_token"]
    base = {"IMAGEVAULT_KMS": "transit", "IMAGEVAULT_VAULT_ADDR": private_openbao.addr,
            "IMAGEVAULT_VAULT_KEY": "imagevault-kek", "IMAGEVAULT_SHRED_EPOCH_INTERVAL": "0"}
    daemon_env = {**base, "IMAGEVAULT_VAULT_TOKEN": daemon_token}
    cli_env = {**base, "IMAGEVAULT_VAULT_TOKEN": operator_token}
    data_dir = tmp_path / "data"
    cli(data_dir, "init", env=daemon_env)
    await race_epoch_with_uploads(data_dir, tmp_path, daemon_env, cli_env)
    key = root.secrets.transit.read_key("imagevault-kek")["data"]
    assert int(key["min_available_version"]) == 2 and sorted(key["keys"]) == ["2"]


async def test_a_rotation_from_the_cli_empties_the_daemons_prewrapped_key_pool(tmp_path, private_openbao):
    private_openbao.create_key("imagevault-kek")
    env = {"IMAGEVAULT_KMS": "transit", "IMAGEVAULT_VAULT_ADDR": private_openbao.addr,
           "IMAGEVAULT_VAULT_KEY": "imagevault-kek", "IMAGEVAULT_VAULT_TOKEN": private_openbao.root_token,
           "IMAGEVAULT_SHRED_EPOCH_INTERVAL": "0"}
    data_dir = tmp_path / "data"
    cli(data_dir, "init", env=env)
    token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "cam",
                env=env).stdout.strip()
    daemon = Daemon(data_dir, tmp_path / "daemon.log", env=env)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as session:
            async def upload(n: int) -> dict:
                body = upload_body(random_image(1000, n), sample_metadata())
                async with session.post(f"{daemon.url}/v1/images", data=body, headers=headers) as response:
                    assert response.status == 201
                    return await response.json()

            assert (await upload(1))["key_version"] == 1  # the pool now holds keys wrapped under v1
            await asyncio.to_thread(cli, data_dir, "keys", "rotate", env=env, timeout=120)
            assert (await upload(2))["key_version"] == 2
    finally:
        daemon.stop()
