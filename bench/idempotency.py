"""What an ``Idempotency-Key`` costs an upload: the same daemon, the same images, with and without.

One imagevault daemon (local keyring); C concurrent clients upload the same N images in rounds
that alternate between "every upload carries a fresh ``Idempotency-Key``" and "no key", the
order rotating each round (this machine is shared and noisy: only a ratio measured in one run,
over alternating rounds, means anything). Reports the median MB/s of each, their ratio and the
median of the per-round ratios (the goal: keys cost less than 3 %), and the latency of a replay
of a key already used. Between rounds
the records are deleted, so every round starts from the same index size.
Writes bench/results/idempotency.json.

    python bench/idempotency.py --images 64 --size-mib 4 --concurrency 16 --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peers import cpu_seconds  # noqa: E402
from bench.results_file import write_result  # noqa: E402
from tests.conftest import jpeg, sample_metadata, upload_body  # noqa: E402
from tests.infra.daemon import Daemon, cli  # noqa: E402


async def upload_all(session: aiohttp.ClientSession, url: str, token: str, images: list[bytes], concurrency: int,
                     keyed: bool) -> tuple[float, list[str]]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for image in images:
        queue.put_nowait(image)
    ids: list[str] = []

    async def worker() -> None:
        while not queue.empty():
            image = queue.get_nowait()
            headers = {"Authorization": f"Bearer {token}"}
            if keyed:
                headers["Idempotency-Key"] = f'"{uuid.uuid4()}"'
            async with session.post(f"{url}/v1/images", data=upload_body(image, sample_metadata()),
                                    headers=headers) as response:
                body = await response.json()
                assert response.status == 201, body
                ids.append(body["id"])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, ids


async def delete_all(session: aiohttp.ClientSession, url: str, dpo: str, ids: list[str]) -> None:
    headers = {"Authorization": f"Bearer {dpo}"}
    params = {"override": "true", "reason": "benchmark cleanup"}
    for rid in ids:
        async with session.delete(f"{url}/v1/images/{rid}", headers=headers, params=params) as response:
            assert response.status == 200, await response.text()


async def replay_latency(session: aiohttp.ClientSession, url: str, token: str, image: bytes, count: int) -> dict[str, float]:
    """Milliseconds of a first upload with a key and of its replays (the body read and hashed again)."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f'"{uuid.uuid4()}"'}
    samples: dict[str, list[float]] = {"first": [], "replay": []}
    for n in range(count + 1):
        started = time.perf_counter()
        async with session.post(f"{url}/v1/images", data=upload_body(image, sample_metadata()), headers=headers) as r:
            await r.read()
            assert r.status == 201 and (n == 0) == ("Idempotent-Replayed" not in r.headers)
        samples["first" if n == 0 else "replay"].append((time.perf_counter() - started) * 1000)
    return {"first_ms": round(samples["first"][0], 1), "replay_median_ms": round(statistics.median(samples["replay"]), 1)}


async def overhead_per_upload(repeat: int = 400) -> dict[str, float]:
    """CPU microseconds a key adds to one upload, by the parts it adds (an upload's own CPU is
    too noisy on a shared machine to show a difference this small): the lookup (an HMAC and an
    index read), the request fingerprint (canonical JSON, an HKDF and an HMAC), and filing the
    outcome (its own index write, against an empty one: an upload files it inside the record's
    commit, so this is an upper bound). Medians of ``repeat`` runs of each, on a real service."""
    from datetime import datetime, timezone

    from tests.conftest import make_config, open_vault
    from vault.auth import Principal, Role
    from vault.idempotency import upload_material
    from vault.index import schema
    from vault.metadata import parse_metadata
    from vault.services.idempotency import upload_fingerprint

    principal = Principal("bench", Role.CLINICIAN, "camera")
    metadata = parse_metadata(sample_metadata())
    dek, rid = os.urandom(32), os.urandom(16)

    def cpu_us(samples: list[float]) -> float:
        return round(statistics.median(samples) * 1e6, 1)

    times: dict[str, list[float]] = {"lookup": [], "fingerprint": [], "file": [], "commit": []}
    with tempfile.TemporaryDirectory() as tmp:
        vault = await open_vault(make_config(Path(tmp) / "data", lmdb_map_size=256 << 20))
        outcomes = vault.idempotency
        try:
            for n in range(repeat):
                key = str(uuid.uuid4())
                started = time.process_time()
                claim = outcomes.claim_upload(principal, key)
                times["lookup"].append(time.process_time() - started)
                started = time.process_time()
                material = upload_material(metadata.to_json(), "image/jpeg", hashlib.sha256(b"%d" % n).hexdigest())
                outcome = {"kind": "upload", "record": "0" * 26, "request": upload_fingerprint(dek, rid, material)}
                times["fingerprint"].append(time.process_time() - started)
                now = datetime.now(timezone.utc)

                # A commit that writes something anyway (as the record's does), with and without
                # the outcome: the difference is what filing it adds to the record's commit.
                def commit(txn: Any, n: int = n) -> None:
                    txn.put_doc(schema.DB_JOBS, b"bench-idempotency", {"n": n})

                def commit_and_file(txn: Any, n: int = n, claim: Any = claim, outcome: Any = outcome,
                                    now: datetime = now) -> None:
                    commit(txn, n)
                    outcomes.put(txn, claim, outcome, now)

                for name, job in (("file", commit_and_file), ("commit", commit))[:: 1 if n % 2 else -1]:
                    started = time.process_time()
                    await vault.index.write(job)
                    times[name].append(time.process_time() - started)
                outcomes.release(claim)
        finally:
            await vault.close()
    out = {name: cpu_us(samples) for name, samples in times.items()}
    out["added_us"] = round(out["lookup"] + out["fingerprint"] + max(0.0, out["file"] - out["commit"]), 1)
    return {f"{k}_us" if not k.endswith("_us") else k: v for k, v in out.items()}


async def run(count: int, size_mib: int, concurrency: int, rounds: int) -> dict[str, object]:
    images = [jpeg(os.urandom(size_mib << 20)) for _ in range(count)]
    total_mb = sum(map(len, images)) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_dir = tmp_path / "data"
        cli(data_dir, "init")
        token = cli(data_dir, "token", "create", "--tenant", "bench", "--role", "clinician", "--name", "camera").stdout.strip()
        dpo = cli(data_dir, "token", "create", "--tenant", "bench", "--role", "dpo", "--name", "cleanup").stdout.strip()
        daemon = Daemon(data_dir, tmp_path / "daemon.log")
        rates: dict[str, list[float]] = {"without": [], "with": []}
        cpu: dict[str, list[float]] = {"without": [], "with": []}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
                await upload_all(session, daemon.url, token, images[:concurrency], concurrency, False)  # warm up
                for r in range(rounds):
                    for keyed in ((False, True) if r % 2 == 0 else (True, False)):
                        name = "with" if keyed else "without"
                        cpu_before = cpu_seconds(daemon.process.pid)
                        seconds, ids = await upload_all(session, daemon.url, token, images, concurrency, keyed)
                        cpu[name].append((cpu_seconds(daemon.process.pid) - cpu_before) / (total_mb / 1000))
                        rates[name].append(total_mb / seconds)
                        await delete_all(session, daemon.url, dpo, ids)
                replay = await replay_latency(session, daemon.url, token, images[0], 10)
        finally:
            daemon.stop()
    without = statistics.median(rates["without"])
    keyed_rate = statistics.median(rates["with"])
    # Each round measures both back to back: the median of the per-round ratios is less exposed
    # to the machine's load drifting between rounds than the ratio of the medians.
    paired = statistics.median(w / o for w, o in zip(rates["with"], rates["without"]))
    # The daemon's CPU seconds per GB: what a key costs the server, much less exposed to the
    # other processes on the machine than wall-clock throughput (the daemon is CPU-bound here).
    cpu_without, cpu_with = statistics.median(cpu["without"]), statistics.median(cpu["with"])
    overhead = await overhead_per_upload()
    # The added CPU of one key against the daemon's CPU for one upload of this size.
    per_image_us = cpu_without * (size_mib << 20) / 1e9 * 1e6
    return {
        "benchmark": "idempotency",
        "images": count, "image_mib": size_mib, "concurrency": concurrency, "rounds": rounds,
        "without_key_mb_s": round(without, 1),
        "with_key_mb_s": round(keyed_rate, 1),
        "with_vs_without": round(keyed_rate / without, 3),
        "with_vs_without_paired": round(paired, 3),
        "server_cpu_s_per_gb_without": round(cpu_without, 3),
        "server_cpu_s_per_gb_with": round(cpu_with, 3),
        "cpu_cost_of_keys": round(cpu_with / cpu_without - 1, 4),
        "in_process": overhead,
        "key_cpu_vs_upload_cpu": round(overhead["added_us"] / per_image_us, 4),
        "rounds_mb_s": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "rounds_cpu_s_per_gb": {k: [round(v, 3) for v in vs] for k, vs in cpu.items()},
        "replay": replay,
        "goal": "Idempotency-Key costs less than 3 % of upload throughput: with_vs_without >= 0.97 "
                "(wall clock, noisy on a shared machine) and key_cpu_vs_upload_cpu < 0.03 (the CPU a key adds, "
                "measured in process, against the daemon's CPU per upload of this size)",
        "met": keyed_rate / without >= 0.97 and overhead["added_us"] / per_image_us < 0.03,
        "load_average": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="upload throughput with and without Idempotency-Key")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size-mib", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "idempotency.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args.images, args.size_mib, args.concurrency, args.rounds))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
