"""Rewrap throughput: N wrapped DEKs moved to a new Transit key version, through the real job.

Fills a fresh index with N data keys wrapped by a real OpenBao Transit key (batched wraps, no
HTTP uploads: rewrap never touches records or blobs), rotates, and times ``KeyAdmin.run``.
Writes bench/results/rewrap.json.

    python bench/rewrap.py --keys 200000
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import write_result  # noqa: E402
from tests.infra.openbao import OpenBaoServer, find_bao  # noqa: E402
from vault.config import load_config  # noqa: E402
from vault.index.lmdb import Index  # noqa: E402
from vault.keys.transit import TransitConfig, TransitKeyProvider  # noqa: E402
from vault.metrics import Metrics  # noqa: E402
from vault.services.context import build_context  # noqa: E402
from vault.services.keyadmin import KeyAdmin  # noqa: E402
from vault.store.backends.fs import FsBackend  # noqa: E402


async def run(count: int, batch: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        server = OpenBaoServer(find_bao(), Path(tmp))
        server.start()
        try:
            server.create_key("bench-kek")
            provider = TransitKeyProvider(TransitConfig(addr=server.addr, token=server.root_token, key_name="bench-kek"))
            await provider.check()
            index = Index(Path(tmp) / "index", map_size=1 << 30)
            started = time.perf_counter()
            for start in range(0, count, 4096):
                n = min(4096, count - start)
                wrapped = await provider.wrap_data_keys([secrets.token_bytes(32) for _ in range(n)])
                ids = [(start + i).to_bytes(16, "big") for i in range(n)]

                def put(txn, ids=ids, wrapped=wrapped):
                    for rid, w in zip(ids, wrapped):
                        txn.put_dek(rid, w)

                await index.write(put)
            fill = time.perf_counter() - started
            config = load_config(data_dir=Path(tmp) / "data", environ={}, rewrap_batch=batch)
            context = build_context(config, provider, FsBackend(config.blobs_dir), index, Metrics())
            rotation = KeyAdmin(context)
            await rotation.rotate()
            calls_before = provider.calls["rewrap"]
            started = time.perf_counter()
            state = await rotation.run()
            elapsed = time.perf_counter() - started
            assert state.state == "done" and state.rewrapped == count, state
            deks, _ = rotation.counts()
            assert deks == {2: count}
            await context.close()
        finally:
            server.stop()
    return {
        "benchmark": "rewrap",
        "keys": count,
        "batch": batch,
        "fill_seconds": round(fill, 2),
        "rewrap_seconds": round(elapsed, 2),
        "rewraps_per_second": round(count / elapsed),
        "transit_rewrap_calls": provider.calls["rewrap"] - calls_before,
        "goal": "200,000 keys in under 10 s",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="rewrap throughput against a real OpenBao")
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rewrap.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args.keys, args.batch))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
