"""Upload and download throughput of ``imagevault serve --workers 1`` and ``--workers 2`` in one
run, with the server's CPU-seconds per GB, the scaling ratio and a projection to a 16-core host.

For each worker count: a fresh data directory (local keyring, filesystem blobs), a real daemon
(``tests.infra.daemon``), ``--files`` images of ``--size`` MiB uploaded ``--concurrency`` at a
time over fresh connections (so the kernel spreads them over the workers), then downloaded and
compared byte for byte; ``--repeat`` rounds, medians reported. Server CPU is user + system time
of the parent and every worker (``/proc/<pid>/stat``), measured around each phase. Renditions
are off (``rendition_workers = 0``): the payloads are random bytes behind a JPEG head, and the
decoders' failures would be CPU that says nothing about serving.

The projection to 16 cores takes the measured per-core cost: a core gives ``1 / cpu_s_per_gb``
GB/s of this work, so 16 cores give 16 times that when nothing else limits (the CPU ceiling);
``linear_from_measured_scaling`` extends the measured 1→2 scaling efficiency instead. Neither
includes the disk's fsync rate or the KMS, which a 16-core host must also have; the client runs
on the same machine as the server here and takes CPU from it.

    python bench/workers.py --files 48 --size 4 --concurrency 16 --repeat 3
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
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peers import cpu_seconds  # noqa: E402
from bench.results_file import default_path, write_result  # noqa: E402
from tests.conftest import random_image, sample_metadata, upload_body  # noqa: E402
from tests.infra.daemon import Daemon, cli  # noqa: E402

PROJECT_CORES = 16


def server_cpu(daemon: Daemon) -> float:
    """CPU seconds of the daemon: its process and, with workers, every worker."""
    pids = [daemon.process.pid, *daemon.worker_pids()] if daemon.workers > 1 else [daemon.process.pid]
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass  # ended between the listing and the read
    return total


async def run_phase(count: int, concurrency: int, work: Any) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            await work(queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def measure(workers: int, files: list[bytes], concurrency: int, repeat: int, workdir: Path) -> dict[str, Any]:
    data_dir = workdir / f"data-{workers}"
    env = {"IMAGEVAULT_RENDITION_WORKERS": "0"}
    cli(data_dir, "init", env=env)
    token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "bench",
                env=env).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    total_mb = sum(len(f) for f in files) / 1e6
    rounds: dict[str, list[float]] = {"up_mb_s": [], "down_mb_s": [], "up_cpu_s_per_gb": [], "down_cpu_s_per_gb": []}
    daemon = Daemon(data_dir, workdir / f"daemon-{workers}.log", workers=workers, env=env)
    try:
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
            ids = [""] * len(files)

            async def upload(i: int) -> None:
                async with session.post(f"{daemon.url}/v1/images", data=upload_body(files[i], sample_metadata())) as response:
                    record = await response.json()
                    assert response.status == 201, record
                    ids[i] = record["id"]

            async def download(i: int) -> None:
                async with session.get(f"{daemon.url}/v1/images/{ids[i]}") as response:
                    assert response.status == 200
                    assert await response.read() == files[i]

            await run_phase(min(len(files), concurrency), concurrency, upload)  # warm: keys, tenant, caches
            for _ in range(repeat):
                for name, work in (("up", upload), ("down", download)):
                    before = server_cpu(daemon)
                    seconds = await run_phase(len(files), concurrency, work)
                    used = server_cpu(daemon) - before
                    rounds[f"{name}_mb_s"].append(total_mb / seconds)
                    rounds[f"{name}_cpu_s_per_gb"].append(used / (total_mb / 1000))
    finally:
        assert daemon.stop() == 0
    medians = {name: round(statistics.median(values), 2) for name, values in rounds.items()}
    return {"workers": workers, **medians, "rounds": {k: [round(v, 2) for v in vs] for k, vs in rounds.items()}}


def project(one: dict[str, Any], many: dict[str, Any], direction: str) -> dict[str, Any]:
    measured = many[f"{direction}_mb_s"] / one[f"{direction}_mb_s"]
    per_core_cost = many[f"{direction}_cpu_s_per_gb"]  # CPU-seconds per GB with workers running
    efficiency = measured / many["workers"]
    return {
        "scaling_ratio": round(measured, 3),
        "scaling_efficiency": round(efficiency, 3),
        "cpu_s_per_gb_per_core": per_core_cost,
        # A tiny run (the smoke test) can use less CPU than the kernel's accounting tick shows.
        f"cpu_bound_ceiling_{PROJECT_CORES}_cores_mb_s": (
            round(PROJECT_CORES * 1000 / per_core_cost, 1) if per_core_cost > 0 else None
        ),
        f"linear_from_measured_scaling_{PROJECT_CORES}_cores_mb_s": round(
            one[f"{direction}_mb_s"] * (1 + (PROJECT_CORES - 1) * efficiency), 1,
        ),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# serve --workers: throughput and CPU per GB",
        "",
        f"{result['files']} files of {result['size_mib']} MiB, {result['concurrency']} at a time, "
        f"median of {result['repeat']}; {result['machine']['cores']} cores, load average at start "
        f"{result['machine']['load_average_at_start']} (a shared machine).",
        "",
        "| workers | upload MB/s | upload CPU-s/GB | download MB/s | download CPU-s/GB |",
        "|---|---|---|---|---|",
    ]
    for row in result["runs"]:
        lines.append(f"| {row['workers']} | {row['up_mb_s']} | {row['up_cpu_s_per_gb']} | {row['down_mb_s']} | "
                     f"{row['down_cpu_s_per_gb']} |")
    lines += ["", "| direction | scaling 1→2 | CPU ceiling, 16 cores (MB/s) | measured scaling extended to 16 cores (MB/s) |",
              "|---|---|---|---|"]
    for direction in ("up", "down"):
        p = result["projection"][direction]
        lines.append(f"| {direction} | {p['scaling_ratio']} | {p[f'cpu_bound_ceiling_{PROJECT_CORES}_cores_mb_s']} | "
                     f"{p[f'linear_from_measured_scaling_{PROJECT_CORES}_cores_mb_s']} |")
    lines += ["", result["note"], ""]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    files = [random_image(args.size << 20, seed) for seed in range(args.files)]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [await measure(n, files, args.concurrency, args.repeat, Path(tmp)) for n in args.workers]
    one = next(r for r in runs if r["workers"] == 1)
    many = max(runs, key=lambda r: r["workers"])
    return {
        "benchmark": "workers",
        "files": args.files, "size_mib": args.size, "concurrency": args.concurrency, "repeat": args.repeat,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": [round(x, 2) for x in load]},
        "runs": runs,
        "projection": {"up": project(one, many, "up"), "down": project(one, many, "down")},
        "note": ("Server CPU is the parent plus every worker. The client shares the machine's cores with the "
                 "server, and other jobs ran on this machine during the measurement, so MB/s is a lower bound "
                 "and the scaling ratio understates what dedicated cores give; CPU-s/GB is the steadier figure. "
                 "The 16-core figures leave out the disk's fsync rate and the KMS."),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--size", type=int, default=4, help="MiB per file")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--out", default=default_path("workers"))
    args = parser.parse_args()
    if 1 not in args.workers or len(args.workers) < 2:
        parser.error("--workers needs 1 and at least one other count, e.g. 1,2")
    result = asyncio.run(main_async(args))
    write_result(args.out, result)
    Path(args.out).with_suffix(".md").write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
