"""Upload and download MB/s of one large image through the real daemon, against the disk.

Starts a daemon on a fresh data directory (embedded default: local keyring, filesystem blobs,
LMDB), uploads an image of --size MiB --repeat times and downloads it as often, and in the same
run measures the baseline of writing the same bytes to a file with fsync and reading them back.
Writes bench/results/roundtrip.json and prints it. Peak RSS of the daemon is reported too.

    python bench/roundtrip.py --size 50 --repeat 5
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
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import write_result  # noqa: E402
from tests.conftest import jpeg, sample_metadata, upload_body  # noqa: E402
from tests.infra.daemon import Daemon, cli  # noqa: E402


def disk_baseline(directory: Path, data: bytes) -> tuple[float, float]:
    path = directory / "baseline.bin"
    started = time.perf_counter()
    with open(path, "wb") as handle:
        view = memoryview(data)
        for offset in range(0, len(data), 1 << 20):
            handle.write(view[offset:offset + (1 << 20)])
        handle.flush()
        os.fsync(handle.fileno())
    write = time.perf_counter() - started
    started = time.perf_counter()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(1 << 20):
            digest.update(piece)
    read = time.perf_counter() - started
    path.unlink()
    return write, read


async def run(size_mib: int, repeat: int) -> dict[str, object]:
    data = jpeg(os.urandom(size_mib << 20))  # uploads are checked against their declared type
    mib = len(data) / (1 << 20)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_dir = tmp_path / "data"
        cli(data_dir, "init")
        token = cli(data_dir, "token", "create", "--tenant", "bench", "--role", "clinician", "--name", "bench").stdout.strip()
        daemon = Daemon(data_dir, tmp_path / "daemon.log")
        uploads, downloads, disk_w, disk_r = [], [], [], []
        try:
            headers = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
                for _ in range(repeat):
                    w, r = disk_baseline(tmp_path, data)
                    disk_w.append(w)
                    disk_r.append(r)

                    async def body():
                        view = memoryview(data)
                        for offset in range(0, len(data), 1 << 20):
                            yield bytes(view[offset:offset + (1 << 20)])

                    started = time.perf_counter()
                    async with session.post(f"{daemon.url}/v1/images", data=upload_body(body(), sample_metadata()), headers=headers) as response:
                        record = await response.json()
                        assert response.status == 201, record
                    uploads.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    digest = hashlib.sha256()
                    async with session.get(f"{daemon.url}/v1/images/{record['id']}", headers=headers) as response:
                        async for piece in response.content.iter_chunked(1 << 20):
                            digest.update(piece)
                    downloads.append(time.perf_counter() - started)
                    assert digest.hexdigest() == record["sha256"]
            peak = daemon.peak_rss_mb()
        finally:
            daemon.stop()

    def rate(times: list[float]) -> float:
        return round(mib / statistics.median(times), 1)

    result = {
        "benchmark": "roundtrip",
        "image_mib": size_mib,
        "repeat": repeat,
        "upload_mb_s": rate(uploads),
        "download_mb_s": rate(downloads),
        "disk_write_fsync_mb_s": rate(disk_w),
        "disk_read_sha256_mb_s": rate(disk_r),
        "upload_vs_disk": round(statistics.median(disk_w) / statistics.median(uploads), 2),
        "download_vs_disk": round(statistics.median(disk_r) / statistics.median(downloads), 2),
        "daemon_peak_rss_mb": round(peak, 1),
        "note": "MB/s = MiB per second, median of repeats; disk baseline = same bytes, write+fsync / read+sha256",
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50, help="image size in MiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "roundtrip.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args.size, args.repeat))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
