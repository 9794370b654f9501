"""The PostgreSQL index engine against LMDB: upload/download MB/s (goal: PostgreSQL >= 0.9x LMDB)
and a patient's timeline search latency on a large PostgreSQL index (goal: p99 < 5 ms at
1,000,000 records).

One run starts a PostgreSQL cluster on loopback (``tests.infra.postgres``: Debian's binaries, a
throwaway cluster; fsync off, as for the tests) and two daemons (``tests.infra.daemon``), both on
the filesystem blob store, one on each index engine. Throughput: the same ``--files`` x
``--size`` MiB of random bytes uploaded then downloaded through each, ``--concurrency`` at a
time, ``--repeat`` rounds, median reported (the method of ``bench/s3_throughput.py``).

Search: ``--records`` records written straight into a PostgreSQL index through the record-writing
code (``tests/infra/bulk.py``: one patient per 20 records, 4096 records a transaction), then
``--searches`` timeline searches (``{"patient_id": ...}``, ``limit`` 50) of random patients through
the service facade in this process, each timed; p50/p99/max reported, with this process's CPU
time per search and the machine's load average (a shared machine: other work runs beside it).
The service runs as in a daemon, with the key-generation watch (``DataKeys.watch``) following
key changes. The figure is labelled with the record count: a smaller ``--records`` is the figure
at that size, not at 1,000,000. The LMDB baseline is measured in the same run at
``--lmdb-records`` (default: the same count; 0 skips it).

With ``--files 0`` the throughput part is skipped; a throughput section already in the results
file is kept, marked as measured by an earlier run.

Writes bench/results/postgres.json and prints it.

    python bench/postgres.py --files 16 --size 4 --concurrency 8 --repeat 3 --records 1000000
    python bench/postgres.py --files 0 --records 1000000 --lmdb-records 0   # the search figure alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import default_path, write_result  # noqa: E402
from bench.s3_throughput import through_daemon  # noqa: E402
from tests.conftest import jpeg, make_config, open_vault  # noqa: E402
from tests.infra.bulk import fill_records, record_metadata  # noqa: E402
from tests.infra.daemon import Daemon, cli  # noqa: E402
from tests.infra.postgres import PostgresServer, ensure_postgres  # noqa: E402
from tests.infra.roundtrips import RoundTripCounter
from vault.auth import Principal, Role  # noqa: E402
from vault.search import SearchQuery  # noqa: E402

TENANT = "bench"
GOAL_RATIO = 0.9
GOAL_P99_MS = 5.0


async def throughput(server: PostgresServer, tmp: Path, files: list[bytes], concurrency: int,
                     repeat: int) -> dict[str, Any]:
    total_mib = sum(len(f) for f in files) / (1 << 20)
    engines = {"lmdb": {}, "postgres": {"IMAGEVAULT_INDEX_ENGINE": "postgres",
                                         "IMAGEVAULT_POSTGRES_DSN": server.new_database()}}
    daemons: dict[str, tuple[Daemon, str]] = {}
    times: dict[str, dict[str, list[float]]] = {name: {"upload": [], "download": []} for name in engines}
    try:
        for name, env in engines.items():
            data_dir = tmp / name
            cli(data_dir, "init", env=env)
            token = cli(data_dir, "token", "create", "--tenant", TENANT, "--role", "clinician", "--name", "bench",
                        env=env).stdout.strip()
            daemons[name] = (Daemon(data_dir, tmp / f"{name}.log", env=env), token)
        for _ in range(repeat):
            for name, (daemon, token) in daemons.items():
                up, down = await through_daemon(daemon, token, files, concurrency)
                times[name]["upload"].append(up)
                times[name]["download"].append(down)
    finally:
        for daemon, _ in daemons.values():
            daemon.stop()
    results = {
        name: {
            "upload_mb_s": round(total_mib / statistics.median(t["upload"]), 1),
            "download_mb_s": round(total_mib / statistics.median(t["download"]), 1),
            "upload_mb_s_each_round": [round(total_mib / s, 1) for s in t["upload"]],
            "download_mb_s_each_round": [round(total_mib / s, 1) for s in t["download"]],
        }
        for name, t in times.items()
    }
    ratio = {way: round(results["postgres"][f"{way}_mb_s"] / results["lmdb"][f"{way}_mb_s"], 2)
             for way in ("upload", "download")}
    return {"results": results, "postgres_vs_lmdb": ratio,
            "goal_met": all(r >= GOAL_RATIO for r in ratio.values())}


async def timeline_search(server: PostgresServer, tmp: Path, records: int, searches: int,
                          lmdb_records: int) -> dict[str, Any]:
    """The search figures on PostgreSQL and, as the baseline measured in the same run on the
    same machine, on LMDB."""
    dsn = server.new_database()
    on_postgres = await timeline_search_on(make_config(tmp / "search-pg", index_engine="postgres", postgres_dsn=dsn),
                                           records, searches)
    on_postgres["round_trips_per_search"] = await round_trips(tmp / "search-pg", dsn, records)
    result = {**on_postgres, "goal_p99_ms": GOAL_P99_MS,
              "goal_met_at_this_size": on_postgres["latency_ms"]["p99"] < GOAL_P99_MS}
    if lmdb_records:
        result["lmdb_baseline"] = await timeline_search_on(
            make_config(tmp / "search-lmdb", lmdb_map_size=max(1 << 32, lmdb_records << 13)), lmdb_records, searches)
    return result


async def round_trips(data_dir: Path, dsn: str, records: int) -> int:
    """Round trips to PostgreSQL of one timeline search, counted on the wire (the least of five:
    a background re-read of the key watch may land in one)."""
    proxy, proxied = RoundTripCounter.in_front_of(dsn)
    vault = await open_vault(make_config(data_dir, index_engine="postgres", postgres_dsn=proxied))
    try:
        vault.context.data_keys.watch()
        clinician = Principal(TENANT, Role.CLINICIAN, "bench")
        counts = []
        for n in range(8):
            await asyncio.sleep(0.05)
            before = proxy.turns
            await vault.search(clinician, SearchQuery(patient_id=record_metadata(min(n, records - 1) * 20 % max(records, 1))
                                                      ["patient_id"], limit=50))
            if n >= 3:  # after the pool's connections are made
                counts.append(proxy.turns - before)
        return min(counts)
    finally:
        await vault.close()
        proxy.close()


async def timeline_search_on(config: Any, records: int, searches: int) -> dict[str, Any]:
    vault = await open_vault(config)
    try:
        vault.context.data_keys.watch()  # as a daemon does (Vault.start_background)
        started = time.perf_counter()
        await fill_records(vault, records, tenant=TENANT,
                           progress=lambda n: print(f"\rfilled {n}/{records}", end="", file=sys.stderr))
        fill_seconds = time.perf_counter() - started
        print(file=sys.stderr)
        clinician = Principal(TENANT, Role.CLINICIAN, "bench")
        patients = max(1, records // 20)
        rng = random.Random(1)
        for _ in range(20):  # warm the connection pool and the prepared statements
            await vault.search(clinician, SearchQuery(patient_id=record_metadata(0)["patient_id"], limit=50))
        latencies = []
        found = 0
        load_before = os.getloadavg()
        cpu_before = time.process_time()
        for _ in range(searches):
            patient = record_metadata(rng.randrange(patients) * 20)["patient_id"]
            began = time.perf_counter()
            page = await vault.search(clinician, SearchQuery(patient_id=patient, limit=50))
            latencies.append((time.perf_counter() - began) * 1000)
            found += len(page.items)
        cpu_ms = (time.process_time() - cpu_before) * 1000 / searches
        load_after = os.getloadavg()
        latencies.sort()
    finally:
        await vault.close()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    return {
        "records": records,
        "fill_seconds": round(fill_seconds, 1),
        "fill_records_per_s": round(records / fill_seconds),
        "searches": searches,
        "records_per_search": round(found / searches, 1),
        "latency_ms": {"p50": round(statistics.median(latencies), 2), "p99": round(p99, 2),
                       "max": round(latencies[-1], 2)},
        "client_cpu_ms_per_search": round(cpu_ms, 2),  # this process: service, driver, crypto (not PostgreSQL)
        "load_average_1_5_15": {"before_searches": [round(x, 2) for x in load_before],
                                "after_searches": [round(x, 2) for x in load_after]},
    }


def earlier_throughput(path: str) -> dict[str, Any] | None:
    """The throughput section of the results file already there, marked as such."""
    try:
        with open(path, encoding="utf-8") as handle:
            earlier = json.load(handle).get("throughput")
    except (OSError, ValueError):
        return None
    if earlier is None:
        return None
    return {**earlier, "measured_by": "an earlier run of this benchmark (not re-run with the search figures)"}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started_load = [round(x, 2) for x in os.getloadavg()]
    bindir = ensure_postgres()
    if bindir is None:
        raise SystemExit("PostgreSQL binaries not found: apt-get install postgresql")
    server = PostgresServer(bindir)
    try:
        with tempfile.TemporaryDirectory(prefix="imagevault-bench-pg-") as tmp:
            files = [jpeg(os.urandom(args.size << 20)) for _ in range(args.files)]
            result: dict[str, Any] = {"benchmark": "postgres"}
            if args.files:
                result["throughput"] = {"files": args.files, "file_mib": args.size, "concurrency": args.concurrency,
                                        "repeat": args.repeat,
                                        **await throughput(server, Path(tmp), files, args.concurrency, args.repeat)}
            else:
                earlier = earlier_throughput(args.out)
                if earlier is not None:
                    result["throughput"] = earlier
            if args.records:
                result["timeline_search"] = await timeline_search(server, Path(tmp), args.records, args.searches,
                                                                  args.records if args.lmdb_records is None
                                                                  else args.lmdb_records)
    finally:
        server.close()
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "load_average_1_5_15_at_start": started_load}
    result["note"] = ("MB/s = MiB moved per second of wall clock for all files, median of rounds; client, daemons "
                      "and PostgreSQL share this machine's CPUs (fsync off in the bench cluster, as in the tests). "
                      "Search latency is the facade call in-process (no HTTP), one search at a time.")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--size", type=int, default=4, help="MiB per file")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--searches", type=int, default=2000)
    parser.add_argument("--lmdb-records", type=int, default=None,
                        help="records of the LMDB search baseline (default: --records; 0: skip it)")
    parser.add_argument("--out", default=default_path("postgres"))
    args = parser.parse_args()
    write_result(args.out, asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
