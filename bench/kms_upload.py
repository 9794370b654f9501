"""Upload throughput with the KEK in OpenBao Transit vs the local keyring, in one run.

Starts two daemons (same machine, same client, same images, same concurrency): one on the
embedded local keyring, one on a real OpenBao Transit key. Measures durable upload MB/s with
C concurrent clients and the Transit calls per uploaded image (from OpenBao's own request
counting is not available in dev mode, so from the daemon's /metrics). Alternates the two
targets over several rounds and reports medians, because this machine is shared and noisy.
Writes bench/results/kms_upload.json.

    python bench/kms_upload.py --images 96 --size-mib 2 --concurrency 16 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import write_result  # noqa: E402
from tests.conftest import jpeg, sample_metadata, upload_body  # noqa: E402
from tests.infra.openbao import OpenBaoServer, find_bao  # noqa: E402
from tests.test_daemon import Daemon, cli  # noqa: E402


async def upload_all(url: str, token: str, images: list[bytes], concurrency: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for image in images:
        queue.put_nowait(image)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            image = queue.get_nowait()
            async with session.post(f"{url}/v1/images", data=upload_body(image, sample_metadata()),
                                    headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 201, await response.text()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - started


async def kms_calls(url: str) -> float:
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(f"{url}/metrics")).text()
    return sum(float(v) for v in re.findall(r'^imagevault_kms_calls_total\{kind="(?:encrypt|decrypt)"\} (\S+)', text, re.M))


async def run(count: int, size_mib: int, concurrency: int, rounds: int) -> dict[str, object]:
    images = [jpeg(os.urandom(size_mib << 20)) for _ in range(count)]  # of the declared type
    mib = count * size_mib
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        server = OpenBaoServer(find_bao(), tmp_path)
        server.start()
        server.create_key("imagevault-kek")
        transit_env = {"IMAGEVAULT_KMS": "transit", "IMAGEVAULT_VAULT_ADDR": server.addr,
                       "IMAGEVAULT_VAULT_TOKEN": server.root_token}
        daemons = {}
        try:
            for name, env in (("local", {}), ("transit", transit_env)):
                data_dir = tmp_path / name
                cli(data_dir, "init", env=env)
                token = cli(data_dir, "token", "create", "--tenant", "bench", "--role", "clinician", "--name", "b", env=env).stdout.strip()
                daemons[name] = (Daemon(data_dir, tmp_path / f"{name}.log", env=env), token)
            times: dict[str, list[float]] = {"local": [], "transit": []}
            for _ in range(rounds):
                for name, (daemon, token) in daemons.items():
                    times[name].append(await upload_all(daemon.url, token, images, concurrency))
            calls = await kms_calls(daemons["transit"][0].url)
        finally:
            for daemon, _ in daemons.values():
                daemon.stop()
            server.stop()
    local = mib / statistics.median(times["local"])
    transit = mib / statistics.median(times["transit"])
    return {
        "benchmark": "kms_upload",
        "images": count, "image_mib": size_mib, "concurrency": concurrency, "rounds": rounds,
        "local_keyring_mb_s": round(local, 1),
        "transit_mb_s": round(transit, 1),
        "transit_vs_local": round(transit / local, 3),
        "transit_calls_per_image": round(calls / (count * rounds), 4),
        "goal": "transit >= 0.95 x local; KMS calls per image < 0.05",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="Transit vs local keyring upload throughput")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size-mib", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "kms_upload.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args.images, args.size_mib, args.concurrency, args.rounds))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
