"""Ordering proof: what reaches the disk, and in which order, before the daemon answers.

The daemon runs under ``strace -f -y`` (every thread; file descriptors shown with their paths).
For one upload: write the temp blob → fsync(temp) → rename into place → fsync(shard directory)
→ LMDB commit (fdatasync of data.mdb) → only then the ``201``. For one erase: the LMDB commit
that deletes the wrapped key comes before the blob is unlinked, and both before the ``200``.
And an fsync failure fails that request; it is never retried into a false success.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import jpeg, random_image, sample_metadata, upload_body
from tests.test_daemon import ROOT, cli, free_port

STRACE = shutil.which("strace")
_CALL = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$")


def parse(trace: Path) -> list[tuple[str, str]]:
    """(syscall, text) in order of *completion* (an unfinished call counts where it resumes)."""
    pending: dict[tuple[str, str], str] = {}
    events: list[tuple[str, str]] = []
    for line in trace.read_text(errors="replace").splitlines():
        match = _CALL.match(line)
        if not match:
            continue
        pid, resumed, name, rest = match.groups()
        if resumed:
            start = pending.pop((pid, resumed), "")
            events.append((resumed, start + rest))
        elif rest.endswith("<unfinished ...>"):
            pending[(pid, name)] = rest
        else:
            events.append((name, rest))
    return events


def first(events, predicate, after: int = -1) -> int:
    for i, event in enumerate(events):
        if i > after and predicate(*event):
            return i
    raise AssertionError("expected system call not found in the trace")


def last_before(events, predicate, before: int) -> int:
    for i in range(before - 1, -1, -1):
        if predicate(*events[i]):
            return i
    raise AssertionError("expected system call not found before the response")


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
async def test_upload_and_erase_reach_the_disk_in_order_before_the_answer(tmp_path):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    # The dpo: the upload below sets a retention date already past.
    token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "dpo", "--name", "t").stdout.strip()
    port = free_port()
    trace = tmp_path / "trace.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMAGEVAULT_DATA_DIR": str(data_dir)}
    process = subprocess.Popen(
        [STRACE, "-f", "-y", "-s", "48", "-o", str(trace),
         "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,write,writev,sendto,sendmsg",
         sys.executable, "-m", "vault.cli", "serve", "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "daemon under strace did not start"
                time.sleep(0.1)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as session:
            meta = sample_metadata(retention={"class": "until", "until": "2020-01-01"})
            async with session.post(f"http://127.0.0.1:{port}/v1/images", data=upload_body(random_image(300_000), meta), headers=headers) as response:
                record = await response.json()
                assert response.status == 201
            await _settle()
            async with session.delete(f"http://127.0.0.1:{port}/v1/images/{record['id']}", headers=headers) as response:
                assert response.status == 200
            await _settle()
    finally:
        # Stop the traced daemon itself (SIGTERM, graceful); strace exits with its tracee.
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            for child in children:
                os.kill(int(child), signal.SIGKILL)
            raise
    events = parse(trace)
    rid = record["id"]
    is_temp = lambda name, text: rid in text and ".tmp>" in text.split(",")[0]  # noqa: E731
    fsync_temp = first(events, lambda n, t: n in ("fsync", "fdatasync") and is_temp(n, t))
    rename = first(events, lambda n, t: n.startswith("rename") and rid in t and ".ivb" in t, fsync_temp)
    shard = f"/blobs/{rid[-2:].lower()}>"
    fsync_dir = first(events, lambda n, t: n in ("fsync", "fdatasync") and t.split(")")[0].endswith(shard), rename)
    answer_201 = first(events, lambda n, t: n in ("write", "writev", "sendto", "sendmsg") and "HTTP/1.1 201" in t, fsync_dir)
    commit = last_before(events, lambda n, t: n in ("fsync", "fdatasync") and "data.mdb>" in t, answer_201)
    assert fsync_temp < rename < fsync_dir < commit < answer_201
    answer_200 = first(events, lambda n, t: n in ("write", "writev", "sendto", "sendmsg") and "HTTP/1.1 200" in t, answer_201)
    unlink = last_before(events, lambda n, t: n.startswith("unlink") and rid in t, answer_200)
    shred_commit = last_before(events, lambda n, t: n in ("fsync", "fdatasync") and "data.mdb>" in t, unlink)
    assert answer_201 < shred_commit < unlink < answer_200


async def _settle() -> None:
    import asyncio

    await asyncio.sleep(0.2)


async def test_an_fsync_failure_fails_the_upload_and_is_never_retried_into_success(api, service, monkeypatch):
    import vault.store.backends.fs as fs_module

    real_fsync = os.fsync
    calls = []

    def failing_fsync(fd):
        if "/probe." in os.readlink(f"/proc/self/fd/{fd}"):
            return real_fsync(fd)  # the daemon's periodic readiness probe, not the upload
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fs_module.os, "fsync", failing_fsync)
    status, body = await api.upload(random_image(100_000), expect=None)
    monkeypatch.setattr(fs_module.os, "fsync", real_fsync)
    assert status == 503 and body["error"]["code"] == "store_unavailable"
    assert len(calls) == 1  # one attempt: a retried fsync can report success over lost pages
    assert service.count_records() == 0
    assert [p for p in service.config.blobs_dir.rglob("*") if p.is_file()] == []
    assert (await api.upload(jpeg(b"next one is fine")))["size"] == len(jpeg(b"next one is fine"))


async def test_disk_full_during_upload_is_507_and_reads_keep_working(aiohttp_client, tmp_path):
    from tests.conftest import Api, make_config, open_vault
    from vault.api.app import create_app

    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a small tmpfs here (the ENOSPC mapping is unit-tested in tests/store)")
    try:
        config = make_config(mount / "data", lmdb_map_size=2 << 20)
        vault = await open_vault(config)
        try:
            api = Api(await aiohttp_client(create_app(config, vault=vault)), vault, {})
            small = await api.upload(jpeg(b"fits easily"))
            status, body = await api.upload(random_image(12 << 20), expect=None)
            assert status == 507 and body["error"]["code"] == "insufficient_storage"
            assert vault.count_records() == 1
            assert [p for p in (config.blobs_dir / "tmp").iterdir()] == []
            response = await api.client.get(f"/v1/images/{small['id']}", headers=await api.headers())
            assert await response.read() == jpeg(b"fits easily")
            assert (await api.upload(jpeg(b"small again")))["size"] == len(jpeg(b"small again"))
        finally:
            await vault.close()
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
