"""Privacy operations against the real stack: patient erasure, retention sweep, export.

Runs the service in-process on a fresh data directory (embedded default: local keyring,
filesystem blobs, LMDB index and audit trail, every commit fsynced) and measures

* erasure of one patient with --records images (goal: under 1 s; a vendor promises 60 s),
  the median of --repeat patients, wall time of ``erase_patient`` including blob deletion;
* the retention sweep rate (records/s) over --sweep expired records, dry run and real;
* subject access export throughput (MiB/s) of --export-mib MiB in --export-files images,
  both consuming the zip stream in-process and over HTTP from a local aiohttp server.

Writes bench/results/privacy.json and prints it.

    python bench/privacy.py --records 1000 --repeat 3 --sweep 5000 --export-mib 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import create_many, make_config, open_vault, sample_metadata  # noqa: E402
from vault.api.app import create_app  # noqa: E402
from vault.auth import Principal, Role  # noqa: E402
from vault.patients import ErasureRequest, ExportRequest  # noqa: E402

DPO = Principal("bench", Role.DPO, "bench-dpo")
OPERATOR = Principal("-", Role.ADMIN, "bench-operator")


async def bench_erasure(tmp: Path, records: int, repeat: int, image_kib: int) -> dict[str, object]:
    service = await open_vault(make_config(tmp / "erase", lmdb_map_size=256 << 20))
    data = os.urandom(image_kib * 1024)
    timings, reported = [], []
    try:
        for n in range(repeat):
            patient = f"BENCH-PATIENT-{n}"
            started = time.perf_counter()
            await create_many(service, records, sample_metadata(patient_id=patient), tenant="bench", data=data, concurrency=64)
            upload_s = time.perf_counter() - started
            started = time.perf_counter()
            report = await service.erase_patient(DPO, ErasureRequest(patient, "benchmark", override_retention=True))
            timings.append(time.perf_counter() - started)
            reported.append(report.seconds)
            assert report.shredded == records, report
        return {
            "records": records,
            "image_kib": image_kib,
            "erase_seconds_median": round(statistics.median(timings), 3),
            "erase_seconds_all": [round(t, 3) for t in timings],
            "erase_records_per_s": round(records / statistics.median(timings)),
            "reported_seconds_median": round(statistics.median(reported), 3),
            "setup_upload_records_per_s": round(records / upload_s),
            "goal_seconds": 1.0,
            "vendor_anchor_seconds": 60.0,
        }
    finally:
        await service.close()


async def bench_sweep(tmp: Path, count: int, clock_days: int = 0) -> dict[str, object]:
    service = await open_vault(make_config(tmp / "sweep", lmdb_map_size=256 << 20))
    try:
        expired = sample_metadata(retention={"class": "until", "until": "2020-01-01"})
        for tenant in ("bench-a", "bench-b"):
            await create_many(service, count // 2, expired, tenant=tenant, concurrency=64, role=Role.DPO)
        await create_many(service, count // 10, sample_metadata(), tenant="bench-a", concurrency=64)  # not due
        started = time.perf_counter()
        dry = await service.sweep_retention(OPERATOR, dry_run=True)
        dry_s = time.perf_counter() - started
        started = time.perf_counter()
        real = await service.sweep_retention(OPERATOR)
        real_s = time.perf_counter() - started
        assert real.shredded == count - count % 2, real
        return {
            "records_due": real.due,
            "records_not_due": count // 10,
            "dry_run_records_per_s": round(dry.due / dry_s),
            "sweep_records_per_s": round(real.shredded / real_s),
            "sweep_seconds": round(real_s, 3),
        }
    finally:
        await service.close()


async def bench_export(tmp: Path, total_mib: int, files: int) -> dict[str, object]:
    config = make_config(tmp / "export", lmdb_map_size=256 << 20)
    service = await open_vault(config)
    size = (total_mib << 20) // files
    try:
        patient = "BENCH-EXPORT-PATIENT"
        for n in range(files):
            await create_many(service, 1, sample_metadata(patient_id=patient), tenant="bench", data=os.urandom(size), concurrency=1)
        total = size * files
        timings = []
        for _ in range(2):
            export = await service.export_patient(DPO, ExportRequest(patient))
            started = time.perf_counter()
            written = 0
            async for piece in export.chunks():
                written += len(piece)
            timings.append(time.perf_counter() - started)
        in_process = total / min(timings) / (1 << 20)

        runner = web.AppRunner(create_app(config, vault=service))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        token, _ = await service.tokens.create("bench", Role.DPO, "bench-export")
        http_timings = []
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                started = time.perf_counter()
                async with session.post(f"http://127.0.0.1:{port}/v1/patients/export", json={"patient_id": patient},
                                        headers={"Authorization": f"Bearer {token}"}) as response:
                    assert response.status == 200
                    received = 0
                    async for piece in response.content.iter_chunked(1 << 20):
                        received += len(piece)
                http_timings.append(time.perf_counter() - started)
        await runner.cleanup()
        return {
            "files": files,
            "image_mib": round(size / (1 << 20), 2),
            "zip_bytes": written,
            "in_process_mib_s": round(in_process, 1),
            "http_mib_s": round(total / min(http_timings) / (1 << 20), 1),
        }
    finally:
        await service.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        erasure = await bench_erasure(tmp_path, args.records, args.repeat, args.image_kib)
        sweep = await bench_sweep(tmp_path, args.sweep)
        export = await bench_export(tmp_path, args.export_mib, args.export_files)
    return {
        "benchmark": "privacy",
        "machine": f"{os.cpu_count()} cores, shared; data dir on {tempfile.gettempdir()}",
        "erasure": erasure,
        "sweep": sweep,
        "export": export,
        "note": "in-process service on the embedded default (local keyring, fs blobs, LMDB index + audit, fsync on); "
                "erasure time includes the index transaction, audit entry and deleting every blob",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--image-kib", type=int, default=64)
    parser.add_argument("--sweep", type=int, default=5000)
    parser.add_argument("--export-mib", type=int, default=200)
    parser.add_argument("--export-files", type=int, default=20)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "privacy.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
