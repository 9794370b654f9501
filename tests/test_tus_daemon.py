"""Resumable uploads against the real daemon: a restart in the middle of an upload, then the
same client resumes; an expired upload purged by the daemon itself; on the filesystem and on S3."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import pytest
import requests
from tusclient import client as tus

from tests.conftest import STORES, sample_metadata
from tests.infra.daemon import Daemon, cli
from tests.ingest.crafted import jpeg_with_identifiers

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(params=STORES)
def environment(request, tmp_path) -> dict[str, str]:
    if request.param == "s3":
        seaweed = request.getfixturevalue("seaweed")
        return seaweed.environment(request.getfixturevalue("new_bucket")(seaweed))
    return {}


def _init(data_dir: Path, env: dict[str, str]) -> str:
    cli(data_dir, "init", env=env)
    return cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "camera-1",
               env=env).stdout.strip()


def _uploader(endpoint: str, token: str, data: bytes, url: str | None = None) -> tus.Uploader:
    client = tus.TusClient(endpoint, headers={"Authorization": f"Bearer {token}"})
    return client.uploader(file_stream=io.BytesIO(data), chunk_size=256 * 1024, url=url, metadata={
        "metadata": json.dumps(sample_metadata()), "content_type": "image/jpeg"})


def test_an_upload_survives_a_daemon_restart_and_the_same_client_resumes(tmp_path, environment):
    data_dir = tmp_path / "data"
    token = _init(data_dir, environment)
    data = jpeg_with_identifiers() + bytes(range(256)) * 4096  # ~1 MiB
    daemon = Daemon(data_dir, tmp_path / "first.log", env=environment)
    try:
        uploader = _uploader(f"{daemon.url}/v1/uploads", token, data)
        uploader.upload(stop_at=512 * 1024)
        path = uploader.url.split("://", 1)[1].split("/", 1)[1]
    finally:
        assert daemon.stop() == 0
    daemon = Daemon(data_dir, tmp_path / "second.log", env=environment)
    try:
        resumed = _uploader(f"{daemon.url}/v1/uploads", token, data, url=f"{daemon.url}/{path}")
        assert resumed.offset == 512 * 1024  # asked the restarted daemon
        resumed.upload()
        auth = {"Authorization": f"Bearer {token}"}
        state = requests.head(f"{daemon.url}/{path}", headers={**auth, **TUS}, timeout=10)
        location = state.headers["Content-Location"]
        record = requests.get(f"{daemon.url}{location}/metadata", headers=auth, timeout=10).json()
        assert record["received_sha256"] == hashlib.sha256(data).hexdigest()
        posted = requests.post(f"{daemon.url}/v1/images", headers=auth, timeout=30, files={
            "metadata": (None, json.dumps(sample_metadata()), "application/json"),
            "file": ("image.jpg", data, "image/jpeg")}).json()
        assert posted["sha256"] == record["sha256"]
    finally:
        assert daemon.stop() == 0
    # Start-up recovery kept the staged segments of the open upload: nothing was quarantined.
    quarantine = data_dir / "quarantine"
    assert not quarantine.exists() or not list(quarantine.iterdir())
    assert "start-up recovery: store consistent" in (tmp_path / "second.log").read_text()


def test_the_daemon_purges_expired_uploads_and_their_staged_data(tmp_path):
    data_dir = tmp_path / "data"
    token = _init(data_dir, {})
    daemon = Daemon(data_dir, tmp_path / "daemon.log", env={"IMAGEVAULT_UPLOAD_EXPIRY": "2"})
    try:
        uploader = _uploader(f"{daemon.url}/v1/uploads", token, jpeg_with_identifiers() + bytes(600_000))
        uploader.upload(stop_at=256 * 1024)
        shards = [p for p in (data_dir / "blobs").rglob("*.ivb")]
        assert len(shards) == 1  # the staged segment
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(p.exists() for p in shards):
            time.sleep(0.2)
        assert not any(p.exists() for p in shards)
        auth = {"Authorization": f"Bearer {token}", **TUS}
        assert requests.head(uploader.url, headers=auth, timeout=10).status_code == 404
    finally:
        assert daemon.stop() == 0
    assert "expired upload(s) deleted" in (tmp_path / "daemon.log").read_text()
