"""A normal client's latency while hundreds of trickling clients are connected to the daemon.

Starts the real daemon (subprocess, loopback, default connection settings unless given) and
measures a normal client's ``GET /healthz`` and small-upload latency twice: alone, then while
``--header-clients`` connections trickle header lines (one every 0.5 s, reconnecting whenever
the daemon cuts them off at ``header_timeout``) and ``--body-clients`` uploads trickle their file
part (5 bytes every 0.1 s, reconnecting after their 408). Reports p50/p99 of each, how often the
normal uploads found no free slot (503), and the eviction counters of ``/metrics``.
Writes bench/results/slow_clients.json.

    python bench/slow_clients.py                 # 300 + 32 trickling clients
    python bench/slow_clients.py --quick          # 50 + 8, a few seconds (smoke)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench.results_file import default_path, write_result  # noqa: E402
from tests.conftest import jpeg, sample_metadata, upload_body  # noqa: E402
from tests.infra.daemon import Daemon, cli  # noqa: E402

HOST = "127.0.0.1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


async def trickle_headers(port: int, stop: asyncio.Event, counts: dict[str, int]) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            counts["connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        counts["connected"] += 1
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            n = 0
            while not stop.is_set() and not reader.at_eof():
                await asyncio.sleep(0.5)
                writer.write(b"X-Slow-%d: 1\r\n" % n)
                await writer.drain()
                n += 1
            if reader.at_eof():
                counts["evicted"] += 1
        except ConnectionError:
            counts["evicted"] += 1
        finally:
            counts["connected"] -= 1
            writer.close()


async def trickle_body(port: int, token: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    metadata = json.dumps(sample_metadata()).encode()
    prefix = (
        b"--b\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n"
        + metadata + b"\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
        b"Content-Type: image/jpeg\r\n\r\n"
    )
    head = (
        f"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(prefix) + 100_000_000}\r\n\r\n"
    ).encode()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        response = asyncio.create_task(reader.read())
        try:
            writer.write(head + prefix)
            while not stop.is_set() and not response.done():
                writer.write(b"\xff" * 5)
                await writer.drain()
                await asyncio.sleep(0.1)
            if response.done():
                counts["408" if b" 408 " in response.result()[:20] else "closed"] += 1
        except ConnectionError:
            counts["closed"] += 1
        finally:
            response.cancel()
            writer.close()


async def normal_client(url: str, token: str, requests: int, uploads: int) -> dict[str, Any]:
    health: list[float] = []
    stored: list[float] = []
    refused = 0
    headers = {"Authorization": f"Bearer {token}"}
    image = jpeg(bytes(50_000))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(requests):
            started = time.perf_counter()
            async with session.get(f"{url}/healthz") as response:
                await response.read()
                assert response.status == 200, response.status
            health.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
        for _ in range(uploads):
            while True:
                started = time.perf_counter()
                async with session.post(f"{url}/v1/images", data=upload_body(image, sample_metadata()), headers=headers) as response:
                    await response.read()
                if response.status == 201:
                    stored.append(time.perf_counter() - started)
                    break
                assert response.status == 503, response.status
                refused += 1
                await asyncio.sleep(0.2)
    return {"healthz": summary(health), "upload_50kb": summary(stored), "uploads_refused_503": refused}


async def evictions(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    found = re.findall(r'^imagevault_connections_evicted_total\{reason="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {reason: float(value) for reason, value in found}


async def measure(daemon: Daemon, token: str, args: argparse.Namespace) -> dict[str, Any]:
    alone = await normal_client(daemon.url, token, args.requests, args.uploads)
    stop = asyncio.Event()
    header_counts = {"connected": 0, "evicted": 0, "connect_failed": 0}
    body_counts = {"408": 0, "closed": 0}
    tasks = [asyncio.create_task(trickle_headers(daemon.port, stop, header_counts)) for _ in range(args.header_clients)]
    tasks += [asyncio.create_task(trickle_body(daemon.port, token, stop, body_counts)) for _ in range(args.body_clients)]
    await asyncio.sleep(1.0)
    connected_at_start = header_counts["connected"]
    under_attack = await normal_client(daemon.url, token, args.requests, args.uploads)
    await asyncio.sleep(max(0.0, args.attack_seconds - 1.0))
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "alone": alone,
        "with_trickling_clients": under_attack,
        "header_clients": args.header_clients,
        "header_clients_connected_when_measuring": connected_at_start,
        "header_clients_evicted": header_counts["evicted"],
        "body_clients": args.body_clients,
        "body_clients_answered_408": body_counts["408"],
        "body_clients_closed_without_answer": body_counts["closed"],
        "evictions_metric": await evictions(daemon.url),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--header-clients", type=int, default=300)
    parser.add_argument("--body-clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=300, help="normal GET /healthz per phase")
    parser.add_argument("--uploads", type=int, default=30, help="normal 50 kB uploads per phase")
    parser.add_argument("--attack-seconds", type=float, default=15.0, help="keep trickling at least this long")
    parser.add_argument("--header-timeout", default="10")
    parser.add_argument("--min-upload-rate", default="8192")
    parser.add_argument("--upload-rate-window", default="10")
    parser.add_argument("--max-concurrent-uploads", default="32")
    parser.add_argument("--quick", action="store_true", help="50 + 8 clients, few requests (smoke)")
    parser.add_argument("--out", default=default_path("slow_clients"))
    args = parser.parse_args()
    if args.quick:
        args.header_clients, args.body_clients, args.requests, args.uploads = 50, 8, 30, 3
        args.attack_seconds, args.header_timeout, args.upload_rate_window = 3.0, "1", "1"
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        cli(data_dir, "init")
        token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "bench",
                    "--ttl", "1d").stdout.strip()
        settings = {
            "IMAGEVAULT_HEADER_TIMEOUT": args.header_timeout, "IMAGEVAULT_MIN_UPLOAD_RATE": args.min_upload_rate,
            "IMAGEVAULT_UPLOAD_RATE_WINDOW": args.upload_rate_window,
            "IMAGEVAULT_MAX_CONCURRENT_UPLOADS": args.max_concurrent_uploads, "IMAGEVAULT_BODY_READ_TIMEOUT": "5",
        }
        daemon = Daemon(data_dir, Path(tmp) / "daemon.log", env=settings)
        try:
            result = asyncio.run(measure(daemon, token, args))
        finally:
            daemon.stop()
    result["settings"] = {k.removeprefix("IMAGEVAULT_").lower(): v for k, v in settings.items()}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
