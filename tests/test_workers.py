"""``imagevault serve --workers 2`` as real processes: the core API over both workers, one audit
chain, the data directory lock, graceful shutdown, restarts, job leaders, key caches dropped
across processes and /metrics merged over the workers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import PATIENT_IDS, random_image, sample_metadata, upload_body
from tests.infra.daemon import ROOT, Daemon, cli

PROMTOOL = "/usr/bin/promtool"


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    cli(path, "init")
    return path


def token(data_dir: Path, role: str, name: str) -> str:
    return cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", role, "--name", name).stdout.strip()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def fresh_connections() -> aiohttp.TCPConnector:
    # A new connection per request: the kernel hands each to whichever worker accepts first.
    return aiohttp.TCPConnector(force_close=True)


def lock_holders(path: Path) -> set[int]:
    """Pids holding a flock on ``path`` (from /proc/locks, by inode)."""
    inode = path.stat().st_ino
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "FLOCK" in parts and parts[-3].endswith(f":{inode}"):
            holders.add(int(parts[-4]))
    return holders


async def wait_until(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_two_workers_serve_the_core_api_with_one_audit_chain(tmp_path):
    # A small map: both workers grow it (and adopt each other's growth) under concurrent writes.
    env = {"IMAGEVAULT_LMDB_MAP_SIZE": str(1 << 17)}
    data_dir = tmp_path / "data"
    cli(data_dir, "init", env=env)
    dpo = token(data_dir, "dpo", "dpo")
    auditor = token(data_dir, "auditor", "auditor")
    daemon = Daemon(data_dir, tmp_path / "daemon.log", workers=2, env=env)
    headers = {"Authorization": f"Bearer {dpo}"}
    try:
        pids = daemon.worker_pids()
        assert len(pids) == 2
        before = {pid: cpu_ticks(pid) for pid in pids}
        images = {n: random_image(30_000 + n, n) for n in range(48)}
        ids: dict[int, str] = {}
        async with aiohttp.ClientSession(connector=fresh_connections(), headers=headers) as session:
            async def upload(n: int) -> None:
                meta = sample_metadata(patient_id=PATIENT_IDS[n % 2], lesion_id=f"L-{n}")
                async with session.post(f"{daemon.url}/v1/images", data=upload_body(images[n], meta)) as response:
                    body = await response.json()
                    assert response.status == 201, body
                    ids[n] = body["id"]

            for start in range(0, len(images), 8):
                await asyncio.gather(*(upload(n) for n in range(start, start + 8)))
            for n, rid in ids.items():  # every record reads back from whichever worker answers
                async with session.get(f"{daemon.url}/v1/images/{rid}") as response:
                    assert response.status == 200
                    assert hashlib.sha256(await response.read()).digest() == hashlib.sha256(images[n]).digest()
            async with session.post(f"{daemon.url}/v1/search", json={"patient_id": PATIENT_IDS[1], "limit": 100}) as response:
                page = await response.json()
                assert response.status == 200, page
            assert {item["id"] for item in page["items"]} == {ids[n] for n in ids if n % 2 == 1}
            async with session.patch(f"{daemon.url}/v1/images/{ids[0]}/metadata", json={"lesion_id": "L-new"}) as response:
                assert response.status == 200
            for _ in range(4):  # seen by both workers
                async with session.get(f"{daemon.url}/v1/images/{ids[0]}/metadata") as response:
                    assert (await response.json())["lesion_id"] == "L-new"
            async with session.delete(f"{daemon.url}/v1/images/{ids[2]}?override=true&reason=test") as response:
                assert response.status == 200
            for _ in range(4):
                async with session.get(f"{daemon.url}/v1/images/{ids[2]}") as response:
                    assert response.status == 404
            erase = {"patient_id": PATIENT_IDS[1], "reason": "request", "override_retention": True}
            async with session.post(f"{daemon.url}/v1/patients/erase", json=erase) as response:
                report = await response.json()
                assert response.status == 200, report
            assert report["shredded"] == 24
            for n in (1, 3, 47):
                async with session.get(f"{daemon.url}/v1/images/{ids[n]}") as response:
                    assert response.status == 404
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {auditor}"}) as session:
            async with session.get(f"{daemon.url}/v1/audit/verify") as response:
                verified = await response.json()
        assert verified["ok"] is True, verified
        assert all(cpu_ticks(pid) > before[pid] for pid in pids), "both workers served"
    finally:
        assert daemon.stop() == 0
    assert "index map grown" in daemon.log_path.read_text()
    result = cli(data_dir, "audit", "verify")
    assert result.stdout.startswith("audit chain intact: 115 entries")  # every worker's appends, one chain


async def test_a_second_serve_is_refused_while_any_worker_lives(data_dir, tmp_path):
    daemon = Daemon(data_dir, tmp_path / "daemon.log", workers=2)
    try:
        second = cli(data_dir, "serve", "--workers", "2", "--listen", "127.0.0.1:0", check=False)
        assert second.returncode == 78
        assert "another imagevault daemon is serving this data directory" in second.stderr
        workers = daemon.worker_pids()
        for pid in workers:  # held still, so they cannot notice their parent's end yet
            os.kill(pid, signal.SIGSTOP)
        daemon.process.send_signal(signal.SIGKILL)  # the parent only: its workers still hold the lock
        daemon.process.wait()
        third = cli(data_dir, "serve", "--workers", "1", "--listen", "127.0.0.1:0", check=False, timeout=60)
        assert third.returncode == 78, third.stderr
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        # Orphaned workers notice, drain and stop; then the directory is free again.
        await wait_until(lambda: not any(Path(f"/proc/{pid}").exists() and "Z" not in
                                         Path(f"/proc/{pid}/stat").read_text().split()[2] for pid in workers),
                         30, "orphaned workers to stop")
    finally:
        daemon.log.close()
    again = Daemon(data_dir, tmp_path / "again.log", workers=2)
    assert again.stop() == 0


async def test_sigterm_lets_an_upload_in_flight_finish_then_every_process_exits_zero(data_dir, tmp_path):
    dpo = token(data_dir, "dpo", "dpo")
    daemon = Daemon(data_dir, tmp_path / "daemon.log", workers=2)
    workers = daemon.worker_pids()
    data = random_image(600_000, 7)

    async def slow_body():
        for offset in range(0, len(data), 100_000):
            yield data[offset:offset + 100_000]
            await asyncio.sleep(0.3)

    async def upload() -> int:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {dpo}"}) as session:
            async with session.post(f"{daemon.url}/v1/images", data=upload_body(slow_body(), sample_metadata())) as response:
                await response.read()
                return response.status

    task = asyncio.ensure_future(upload())
    await asyncio.sleep(0.8)  # the body is streaming
    daemon.process.send_signal(signal.SIGTERM)
    assert await task == 201
    assert await asyncio.get_running_loop().run_in_executor(None, daemon.process.wait, 30) == 0
    daemon.log.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    log = daemon.log_path.read_text()
    assert log.count("vault: stopped") == 3  # two workers and the parent


async def test_a_killed_worker_is_started_again_and_a_killed_leader_hands_its_jobs_over(data_dir, tmp_path):
    daemon = Daemon(data_dir, tmp_path / "daemon.log", workers=2, env={"IMAGEVAULT_AUDIT_WITNESS_INTERVAL": "0.5"})
    try:
        lock = data_dir / "run" / "jobs" / "audit-witness.lock"
        leader = (await wait_until(lambda: lock.exists() and lock_holders(lock), 20, "a witness leader")).pop()
        assert leader in daemon.worker_pids()
        witnessed = daemon.log_path.read_text().count("audit head seq=")
        os.kill(leader, signal.SIGKILL)
        # Another process (the other worker, or the restarted one) leads the job and runs it.
        new = await wait_until(lambda: lock_holders(lock) - {leader}, 30, "a new witness leader")
        assert new.pop() in daemon.worker_pids()
        await wait_until(lambda: daemon.log_path.read_text().count("audit head seq=") > witnessed, 20, "the job to run")
        await wait_until(lambda: len(daemon.worker_pids()) == 2 and leader not in daemon.worker_pids(), 30,
                         "the killed worker to be started again")
        assert "was killed by signal 9; starting it again" in daemon.log_path.read_text()
        async with aiohttp.ClientSession(connector=fresh_connections()) as session:
            for _ in range(6):
                async with session.get(f"{daemon.url}/healthz") as response:
                    assert response.status == 200
    finally:
        assert daemon.stop() == 0


CACHE_PROBE = textwrap.dedent("""
    import asyncio, sys
    from vault.config import load_config
    from vault.ids import decode_id
    from vault.service import Vault

    async def main():
        vault = await Vault.open(load_config())
        rid = decode_id(sys.argv[1])
        pool_emptied = []
        vault.context.data_keys.on_stale(lambda: pool_emptied.append(True))
        keys = await vault.context.data_keys.unwrap([rid])
        print("cached", len(keys), rid in vault.dek_cache._entries, flush=True)
        sys.stdin.readline()  # the record is shredded through the daemon meanwhile
        keys = await vault.context.data_keys.unwrap([rid])
        try:  # a request that read the record just before the shred: 404, not a key error
            await vault.context.data_keys.unwrap_one(rid)
            outcome = "unwrapped"
        except Exception as exc:
            outcome = type(exc).__name__
        # The shred empties the DEK cache, not the pool of fresh keys (they belong to no record).
        print("after-shred", len(keys), rid in vault.dek_cache._entries, outcome, bool(pool_emptied), flush=True)
        sys.stdin.readline()  # the key is rotated by another process meanwhile
        vault.context.data_keys.drop_if_stale()
        print("after-rotate", bool(pool_emptied), flush=True)
        await vault.close()

    asyncio.run(main())
""")


async def test_a_shred_through_one_worker_drops_the_key_cached_by_another_process(data_dir, tmp_path):
    dpo = token(data_dir, "dpo", "dpo")
    daemon = Daemon(data_dir, tmp_path / "daemon.log", workers=2)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {dpo}"}) as session:
            async with session.post(f"{daemon.url}/v1/images", data=upload_body(random_image(5000, 1), sample_metadata())) as response:
                rid = (await response.json())["id"]
            # Process B: the same service code as a worker, on the same data directory.
            probe = subprocess.Popen(
                [sys.executable, "-c", CACHE_PROBE, rid], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT), "IMAGEVAULT_DATA_DIR": str(data_dir)}, cwd=ROOT,
            )
            assert probe.stdout.readline().split() == ["cached", "1", "True"]
            async with session.delete(f"{daemon.url}/v1/images/{rid}?override=true&reason=test") as response:
                assert response.status == 200
            probe.stdin.write("\n")
            probe.stdin.flush()
            # Without the key generation, B would answer this from its cache: ["after-shred", "1", "True"].
            assert probe.stdout.readline().split() == ["after-shred", "0", "False", "NotFound", "False"]
        cli(data_dir, "keys", "rotate")
        probe.stdin.write("\n")
        probe.stdin.flush()
        assert probe.stdout.readline().split() == ["after-rotate", "True"]
        assert probe.wait(timeout=30) == 0
    finally:
        assert daemon.stop() == 0


async def test_metrics_sum_over_the_workers_and_pass_promtool(data_dir, tmp_path):
    daemon = Daemon(data_dir, tmp_path / "daemon.log", workers=2)
    try:
        async with aiohttp.ClientSession(connector=fresh_connections()) as session:
            for _ in range(40):
                async with session.get(f"{daemon.url}/healthz") as response:
                    assert response.status == 200
            scrapes = []
            for _ in range(6):  # whichever worker answers, the same totals
                async with session.get(f"{daemon.url}/metrics") as response:
                    scrapes.append(await response.text())
        files = list((data_dir / "run" / "metrics").glob("counter_*.db"))
        assert len(files) == 2  # both workers counted requests
        for text in scrapes:
            served = re.search(r'imagevault_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)', text)
            assert served is not None and float(served.group(1)) == 40.0
            assert 'pid="' not in text  # every gauge merged by its multiprocess mode
            assert re.search(r"^imagevault_records 0\.0$", text, re.MULTILINE)
            assert re.search(r"^imagevault_connections_open \d", text, re.MULTILINE)
        checked = subprocess.run([PROMTOOL, "check", "metrics"], input=scrapes[-1], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        assert daemon.stop() == 0
    assert not list((data_dir / "run" / "metrics").glob("*.db"))  # a run's files go with it
