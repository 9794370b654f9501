"""What an ``Idempotency-Key`` costs an upload: the same daemon, the same images, with and without.

One imagevault daemon (local keyring); C concurrent clients upload the same N images in rounds
that alternate between "every upload carries a fresh ``Idempotency-Key``" and "no key", the
order rotating each round (this machine is shared and noisy: only a ratio measured in one run,
over alternating rounds, means anything). Reports the median MB/s of each and their ratio (the
goal: keys cost less than 3 %), and the replay latency of a key already used. Between rounds
the records are deleted, so every round starts from the same index size.
Writes bench/results/idempotency.json.

    python bench/idempotency.py --images 64 --size-mib 4 --concurrency 16 --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
                await upload_all(session, daemon.url, token, images[:concurrency], concurrency, False)  # warm up
                for r in range(rounds):
                    for keyed in ((False, True) if r % 2 == 0 else (True, False)):
                        seconds, ids = await upload_all(session, daemon.url, token, images, concurrency, keyed)
                        rates["with" if keyed else "without"].append(total_mb / seconds)
                        await delete_all(session, daemon.url, dpo, ids)
                replay = await replay_latency(session, daemon.url, token, images[0], 10)
        finally:
            daemon.stop()
    without = statistics.median(rates["without"])
    keyed_rate = statistics.median(rates["with"])
    return {
        "benchmark": "idempotency",
        "images": count, "image_mib": size_mib, "concurrency": concurrency, "rounds": rounds,
        "without_key_mb_s": round(without, 1),
        "with_key_mb_s": round(keyed_rate, 1),
        "with_vs_without": round(keyed_rate / without, 3),
        "rounds_mb_s": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "replay": replay,
        "goal": "with_vs_without >= 0.97 (Idempotency-Key costs less than 3 % of upload throughput)",
        "met": keyed_rate / without >= 0.97,
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
