"""The real daemon on the S3 backend as a subprocess: `init` and the bucket, 300 MiB streamed
through SeaweedFS with flat memory, /v1/info and /readyz, SIGTERM."""

from __future__ import annotations

import hashlib
import os

import aiohttp

from tests.conftest import JPEG_HEAD, PATIENT_IDS, jpeg, sample_metadata, upload_body
from tests.infra.daemon import Daemon, cli

MIB = 1 << 20


def test_init_creates_the_bucket_or_refuses_when_not_allowed(seaweed, new_bucket, tmp_path):
    bucket = new_bucket(seaweed, fresh=True)
    env = seaweed.environment(bucket)
    refused = cli(tmp_path / "refused", "init", env={**env, "IMAGEVAULT_S3_CREATE_BUCKET": "false"}, check=False)
    assert refused.returncode == 78
    assert refused.stderr.startswith("imagevault: cannot initialise ") and refused.stderr.count("\n") == 1
    assert refused.stderr.endswith(": blob store bucket does not exist\n")
    done = cli(tmp_path / "data", "init", env=env)
    assert f"S3 bucket {bucket}" in done.stdout
    seaweed.sync_client().head_bucket(Bucket=bucket)
    again = cli(tmp_path / "data", "init", env=env)
    assert "already initialised" in again.stdout
    wrong = cli(tmp_path / "data", "init", env={**env, "IMAGEVAULT_S3_SECRET_KEY": "wrong"}, check=False)
    assert wrong.returncode == 78 and "refused the configured credentials" in wrong.stderr
    assert env["IMAGEVAULT_S3_SECRET_KEY"] not in wrong.stderr


async def test_daemon_on_s3_streams_300_mib_in_and_out_with_flat_memory(seaweed, new_bucket, tmp_path):
    env = seaweed.environment(new_bucket(seaweed))
    data_dir = tmp_path / "data"
    cli(data_dir, "init", env=env)
    token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "big", env=env).stdout.strip()
    daemon = Daemon(data_dir, tmp_path / "daemon.log", env=env)
    headers = {"Authorization": f"Bearer {token}"}
    size = 300 * MIB
    block = os.urandom(MIB)
    expected = hashlib.sha256()

    async def body():
        for i in range(size // MIB):
            piece = i.to_bytes(8, "big") + block[8:]
            if i == 0:  # the first bytes make it a JPEG (uploads are checked against their type)
                piece = jpeg(piece[len(JPEG_HEAD):])
            expected.update(piece)
            yield piece

    try:
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{daemon.url}/v1/info") as response:
                assert (await response.json())["storage_backend"] == "s3"
            async with session.get(f"{daemon.url}/readyz") as response:
                assert response.status == 200
                assert (await response.json())["checks"]["store"] == "ok"
            # Warm up every code path once (a multipart upload, a download), then take the baseline.
            warm = jpeg(os.urandom(20 * MIB))
            async with session.post(f"{daemon.url}/v1/images", data=upload_body(warm, sample_metadata()), headers=headers) as response:
                assert response.status == 201
                warm_id = (await response.json())["id"]
            async with session.get(f"{daemon.url}/v1/images/{warm_id}", headers=headers) as response:
                assert await response.read() == warm
            baseline = daemon.peak_rss_mb()

            async with session.post(f"{daemon.url}/v1/images", data=upload_body(body(), sample_metadata()), headers=headers) as response:
                record = await response.json()
                assert response.status == 201, record
            assert record["size"] == size and record["sha256"] == expected.hexdigest()
            got = hashlib.sha256()
            async with session.get(f"{daemon.url}/v1/images/{record['id']}", headers=headers) as response:
                assert response.status == 200
                async for piece in response.content.iter_chunked(MIB):
                    got.update(piece)
            assert got.hexdigest() == expected.hexdigest()
        growth = daemon.peak_rss_mb() - baseline
        print(f"peak RSS {baseline:.0f} MB before, {baseline + growth:.0f} MB after the 300 MiB round trip")
        # Buffered, the image alone would add 300 MB; streamed, about one 8 MiB part plus slack.
        assert growth < 64, f"peak RSS grew by {growth:.0f} MB during a 300 MiB round trip: not streamed"
        assert daemon.peak_rss_mb() < 200
    finally:
        assert daemon.stop() == 0
    log = (tmp_path / "daemon.log").read_bytes()
    for secret in (*PATIENT_IDS, token, env["IMAGEVAULT_S3_SECRET_KEY"]):
        assert secret.encode() not in log
