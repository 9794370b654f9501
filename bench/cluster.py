"""Upload and download throughput of 1, 2 and 3 daemons on one PostgreSQL index (one SeaweedFS
bucket, one OpenBao Transit key), with server CPU-seconds per GB, and a projection to 16 cores.

For each cluster size: a fresh database and bucket, that many daemons (``tests.infra.cluster``,
each a single process with a data directory of its own), ``--files`` images of ``--size`` MiB
uploaded ``--concurrency`` at a time, spread round-robin over the nodes, then downloaded (each
from another node than the one that took it) and compared byte for byte; ``--repeat`` rounds,
medians. CPU is user + system time from ``/proc/<pid>/stat`` around each phase, reported
separately for the daemons (every daemon process), for PostgreSQL (the postmaster and all its
backends) and for the shared services (SeaweedFS, OpenBao), and ``server`` = daemons +
PostgreSQL. Renditions are off (random bytes behind a JPEG head). Also measured: the cost of
one read of the index's key generation on PostgreSQL, the per-use check that the key watch
(LISTEN/NOTIFY) replaces on this engine.

The projection takes the measured per-core cost: a core gives ``1 / cpu_s_per_gb`` GB/s of this
work, so 16 cores give 16 times that when nothing else limits (the CPU ceiling), and the
measured 1→3 scaling efficiency extended to 16 daemons. Neither includes SeaweedFS's or
OpenBao's own CPU beyond what is listed, nor disks; the client runs on the same machine.

    python bench/cluster.py --files 24 --size 4 --concurrency 12 --repeat 2
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

from bench.peers import tree_cpu_seconds  # noqa: E402
from bench.results_file import default_path, write_result  # noqa: E402
from tests.cluster.harness import Servers, servers  # noqa: E402
from tests.conftest import random_image, sample_metadata, upload_body  # noqa: E402
from tests.infra.cluster import Cluster  # noqa: E402

PROJECT_CORES = 16


def reaped_cpu(pid: int) -> float:
    """CPU seconds of the children ``pid`` has waited for (PostgreSQL's ended backends)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime


def postmaster_pid(running: Servers) -> int:
    return int((running.postgres.data / "postmaster.pid").read_text().split()[0])


class CpuMeter:
    def __init__(self, cluster: Cluster, running: Servers) -> None:
        self.cluster = cluster
        self.running = running

    def sample(self) -> dict[str, float]:
        daemons = sum(tree_cpu_seconds(node.process.pid) for node in self.cluster.nodes if node is not None)
        postmaster = postmaster_pid(self.running)
        postgres = tree_cpu_seconds(postmaster) + reaped_cpu(postmaster)
        shared = 0.0
        for server in (self.running.seaweed, self.running.openbao):
            if server.proc is not None:
                shared += tree_cpu_seconds(server.proc.pid)
        return {"daemons": daemons, "postgres": postgres, "seaweedfs_openbao": shared}


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


async def measure(size: int, files: list[bytes], concurrency: int, repeat: int, running: Servers,
                  workdir: Path) -> dict[str, Any]:
    cluster = Cluster(workdir / f"cluster-{size}", running.settings(), size)
    cluster.start()
    meter = CpuMeter(cluster, running)
    token = cluster.token("clinician", "bench")
    total_gb = sum(len(f) for f in files) / 1e9
    rounds: dict[str, list[float]] = {}
    try:
        urls = cluster.urls
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         headers={"Authorization": f"Bearer {token}"}) as session:
            ids = [""] * len(files)

            async def upload(i: int) -> None:
                async with session.post(f"{urls[i % size]}/v1/images",
                                        data=upload_body(files[i], sample_metadata())) as response:
                    record = await response.json()
                    assert response.status == 201, record
                    ids[i] = record["id"]

            async def download(i: int) -> None:
                async with session.get(f"{urls[(i + 1) % size]}/v1/images/{ids[i]}") as response:
                    assert response.status == 200
                    assert await response.read() == files[i]

            await run_phase(min(len(files), concurrency), concurrency, upload)  # warm: keys, tenant, pools
            for _ in range(repeat):
                for name, work in (("up", upload), ("down", download)):
                    before = meter.sample()
                    seconds = await run_phase(len(files), concurrency, work)
                    after = meter.sample()
                    used = {k: after[k] - before[k] for k in before}
                    rounds.setdefault(f"{name}_mb_s", []).append(total_gb * 1000 / seconds)
                    for k, v in used.items():
                        rounds.setdefault(f"{name}_cpu_s_per_gb_{k}", []).append(v / total_gb)
                    rounds.setdefault(f"{name}_cpu_s_per_gb_server", []).append(
                        (used["daemons"] + used["postgres"]) / total_gb)
    finally:
        cluster.stop()
    medians = {name: round(statistics.median(values), 2) for name, values in rounds.items()}
    return {"daemons": size, **medians, "rounds": {k: [round(v, 2) for v in vs] for k, vs in rounds.items()}}


def generation_read_cost(running: Servers, reads: int = 2000) -> dict[str, float]:
    """Microseconds of one read of the key generation on PostgreSQL (loopback): what a per-use
    check would add, on the event loop, to every request that uses a cached key."""
    from vault.index import postgres as pg_engine
    from vault.services.datakeys import key_generation

    dsn = running.postgres.new_database()
    pg_engine.migrate(dsn)
    index = pg_engine.PgIndex(dsn)
    try:
        samples = []
        for _ in range(reads):
            started = time.perf_counter()
            index.read(key_generation)
            samples.append((time.perf_counter() - started) * 1e6)
    finally:
        index.close()
    samples.sort()
    return {"median_us": round(statistics.median(samples), 1), "p99_us": round(samples[int(len(samples) * 0.99)], 1)}


def project(one: dict[str, Any], many: dict[str, Any], direction: str) -> dict[str, Any]:
    measured = many[f"{direction}_mb_s"] / one[f"{direction}_mb_s"]
    efficiency = measured / many["daemons"]
    per_gb = many[f"{direction}_cpu_s_per_gb_server"]
    return {
        "scaling_ratio": round(measured, 3),
        "scaling_efficiency": round(efficiency, 3),
        "server_cpu_s_per_gb": per_gb,
        f"cpu_bound_ceiling_{PROJECT_CORES}_cores_mb_s": round(PROJECT_CORES * 1000 / per_gb, 1) if per_gb > 0 else None,
        f"linear_from_measured_scaling_{PROJECT_CORES}_cores_mb_s": round(
            one[f"{direction}_mb_s"] * (1 + (PROJECT_CORES - 1) * efficiency), 1),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Several daemons on one PostgreSQL: throughput and CPU per GB",
        "",
        f"{result['files']} files of {result['size_mib']} MiB, {result['concurrency']} at a time, spread over the "
        f"nodes, median of {result['repeat']}; {result['machine']['cores']} cores, load average at start "
        f"{result['machine']['load_average_at_start']}. **A shared 2-core machine**: the client, every daemon, "
        "PostgreSQL, SeaweedFS and OpenBao all run on it, with other jobs alongside.",
        "",
        "CPU-s/GB: `server` = the daemons + PostgreSQL (postmaster and backends); SeaweedFS and OpenBao apart.",
        "",
        "| daemons | upload MB/s | upload CPU-s/GB server (daemons + postgres; S3+KMS) | download MB/s | "
        "download CPU-s/GB server (daemons + postgres; S3+KMS) |",
        "|---|---|---|---|---|",
    ]
    for row in result["runs"]:
        cells = []
        for d in ("up", "down"):
            cells += [str(row[f"{d}_mb_s"]),
                      f"{row[f'{d}_cpu_s_per_gb_server']} ({row[f'{d}_cpu_s_per_gb_daemons']} + "
                      f"{row[f'{d}_cpu_s_per_gb_postgres']}; {row[f'{d}_cpu_s_per_gb_seaweedfs_openbao']})"]
        lines.append(f"| {row['daemons']} | " + " | ".join(cells) + " |")
    top = max(row["daemons"] for row in result["runs"])
    lines += ["", f"| direction | scaling 1→{top} | server CPU-s/GB at {top} | CPU ceiling, 16 cores (MB/s) | "
              "measured scaling extended to 16 (MB/s) |", "|---|---|---|---|---|"]
    for direction in ("up", "down"):
        p = result["projection"][direction]
        lines.append(f"| {direction} | {p['scaling_ratio']} | {p['server_cpu_s_per_gb']} | "
                     f"{p[f'cpu_bound_ceiling_{PROJECT_CORES}_cores_mb_s']} | "
                     f"{p[f'linear_from_measured_scaling_{PROJECT_CORES}_cores_mb_s']} |")
    g = result["key_generation_read"]
    lines += ["", f"One read of the key generation on PostgreSQL: median {g['median_us']} µs, p99 {g['p99_us']} µs "
              "(what a per-use check would cost each request with a cached key, on the event loop).",
              "", result["note"], ""]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    files = [random_image(args.size << 20, seed) for seed in range(args.files)]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, servers(Path(tmp)) as running:
        runs = [await measure(n, files, args.concurrency, args.repeat, running, Path(tmp)) for n in args.daemons]
        generation = generation_read_cost(running)
    one = next(r for r in runs if r["daemons"] == 1)
    many = max(runs, key=lambda r: r["daemons"])
    return {
        "benchmark": "cluster",
        "files": args.files, "size_mib": args.size, "concurrency": args.concurrency, "repeat": args.repeat,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "shared": True,
                    "load_average_at_start": [round(x, 2) for x in load]},
        "runs": runs,
        "projection": {"up": project(one, many, "up"), "down": project(one, many, "down")},
        "key_generation_read": generation,
        "note": ("This machine has 2 cores shared with other jobs, and the client, 1-3 daemons, PostgreSQL, "
                 "SeaweedFS and OpenBao all compete for them: more daemons cannot add throughput here, so the "
                 "scaling ratio says little and CPU-s/GB is the figure to carry over. The 16-core ceiling is "
                 "16 cores / (daemon + PostgreSQL CPU-s per GB); S3, the KMS and disks must keep up separately."),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--size", type=int, default=4, help="MiB per file")
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--daemons", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--out", default=default_path("cluster"))
    args = parser.parse_args()
    if 1 not in args.daemons:
        parser.error("--daemons needs 1, e.g. 1,2,3")
    result = asyncio.run(main_async(args))
    write_result(args.out, result)
    Path(args.out).with_suffix(".md").write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
