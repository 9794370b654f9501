"""The real daemon as a subprocess: init, token CLI, serve, a 1 GiB stream with flat memory, SIGTERM."""

from __future__ import annotations

import hashlib
import os

import aiohttp
import pytest

from tests.conftest import (
    JPEG_HEAD,
    PATIENT_IDS,
    files_under,
    jpeg,
    sample_metadata,
    upload_body,
)
from tests.infra.daemon import ROOT, Daemon, cli, free_port  # noqa: F401 (re-exported for other tests)


@pytest.fixture
def daemon_dir(tmp_path):
    data_dir = tmp_path / "data"
    result = cli(data_dir, "init")
    assert "initialised" in result.stdout
    again = cli(data_dir, "init")
    assert "already initialised" in again.stdout
    return data_dir


def test_init_creates_private_key_material(daemon_dir):
    assert (daemon_dir / "keys" / "master.key").stat().st_mode & 0o077 == 0
    assert daemon_dir.stat().st_mode & 0o077 == 0


def test_token_cli_prints_only_the_token_and_lists_without_values(daemon_dir):
    created = cli(daemon_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "reception", "--ttl", "90d")
    token = created.stdout.strip()
    assert token.startswith("ivt_") and "\n" not in token
    listed = cli(daemon_dir, "token", "list")
    assert "reception" in listed.stdout and token not in listed.stdout
    assert token.encode() not in b"".join(p.read_bytes() for p in files_under(daemon_dir))
    duplicate = cli(daemon_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "reception", check=False)
    assert duplicate.returncode != 0 and duplicate.stderr.count("\n") == 1
    bad_role = cli(daemon_dir, "token", "create", "--tenant", "clinic-a", "--role", "superuser", "--name", "x", check=False)
    assert bad_role.returncode != 0 and "role" in bad_role.stderr
    assert cli(daemon_dir, "token", "revoke", "reception").returncode == 0
    assert "revoked" in cli(daemon_dir, "token", "list").stdout
    assert cli(daemon_dir, "token", "revoke", "reception", check=False).returncode != 0


def test_serve_refuses_an_uninitialised_data_dir(tmp_path):
    result = cli(tmp_path / "nothing", "serve", check=False)
    assert result.returncode != 0
    assert "imagevault init" in result.stderr


async def test_daemon_streams_a_gibibyte_in_and_out_with_flat_memory_and_stops_cleanly(daemon_dir, tmp_path):
    token = cli(daemon_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "big").stdout.strip()
    daemon = Daemon(daemon_dir, tmp_path / "daemon.log")
    size = 1024 * 1024 * 1024
    block = os.urandom(1 << 20)
    expected = hashlib.sha256()

    async def body():
        for i in range(size >> 20):
            piece = i.to_bytes(8, "big") + block[8:]
            if i == 0:  # the first bytes make it a JPEG (uploads are checked against their type)
                piece = jpeg(piece[len(JPEG_HEAD):])
            expected.update(piece)
            yield piece

    try:
        headers = {"Authorization": f"Bearer {token}"}
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(f"{daemon.url}/v1/images", data=upload_body(body(), sample_metadata()), headers=headers) as response:
                record = await response.json()
                assert response.status == 201, record
            assert record["size"] == size and record["sha256"] == expected.hexdigest()
            got = hashlib.sha256()
            async with session.get(f"{daemon.url}/v1/images/{record['id']}", headers=headers) as response:
                assert response.status == 200
                async for piece in response.content.iter_chunked(1 << 20):
                    got.update(piece)
            assert got.hexdigest() == expected.hexdigest()
            async with session.get(f"{daemon.url}/readyz") as response:
                assert response.status == 200
        peak = daemon.peak_rss_mb()
        # A buffered implementation would need > 1024 MB; a streamed one stays near its baseline.
        assert peak < 200, f"peak RSS {peak:.0f} MB: the image was not streamed"
    finally:
        assert daemon.stop() == 0
    log = (tmp_path / "daemon.log").read_bytes()
    for secret in PATIENT_IDS:
        assert secret.encode() not in log
    assert token.encode() not in log
