"""The shred epoch at scale on OpenBao Transit, and uploads while it runs.

Fills a fresh data directory with N records (20 per patient) whose data keys are wrapped by a
real OpenBao Transit key and whose personal fields are really sealed (the re-HMAC phase opens
one record per patient), then measures, in one process:

* upload throughput idle: ``--uploaders`` concurrent 1 MiB uploads through ``Vault.create_image``;
* a first epoch alone (rotate, new blind-index keys, re-HMAC, rewrap, retire), timed by phase;
* a second epoch over the same records while the uploads run, and their throughput meanwhile
  (background key work yields to uploads: ``keyadmin.YIELD_FACTOR``).

Both share one event loop, as when the daemon runs the epoch itself; with Transit the operator
runs it from the CLI in another process, which competes for the CPU only. Goals: epoch of
200,000 records < 30 s; uploads during it >= 0.8x idle. Writes bench/results/epoch.json.

    python bench/epoch.py --records 200000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import default_path, write_result  # noqa: E402
from tests.conftest import jpeg, make_config  # noqa: E402
from tests.infra.openbao import OpenBaoServer, find_bao  # noqa: E402
from vault import components  # noqa: E402
from vault.auth import Principal, Role  # noqa: E402
from vault.ids import new_record_id  # noqa: E402
from vault.index import patient_ids  # noqa: E402
from vault.index.records import StoredRecord  # noqa: E402
from vault.metadata import format_timestamp, parse_metadata  # noqa: E402
from vault.service import Vault  # noqa: E402
from vault.services.reading import without_personal  # noqa: E402
from vault.store.format import derive_subkeys  # noqa: E402
from vault.store.personal import seal_personal  # noqa: E402

OPERATOR = Principal("-", Role.ADMIN, "bench")
CLINICIAN = Principal("bench", Role.CLINICIAN, "bench")
PER_PATIENT = 20
TENANT = "bench"


async def fill(vault: Vault, records: int) -> float:
    started = time.perf_counter()
    index_key = await vault.context.tenant_keys.get(TENANT)
    scheme = await vault.context.tenant_keys.scheme(TENANT, vault.config)
    template = parse_metadata({"patient_id": "x", "captured_at": "2024-01-01T00:00:00Z", "modality": "dermoscopic",
                               "body_site": "upper_back", "lesion_id": "L-1", "description": "synthetic"})
    base = 1_704_067_200
    for start in range(0, records, 4096):
        n = min(4096, records - start)
        deks = [secrets.token_bytes(32) for _ in range(n)]
        wrapped = await vault.keys.wrap_data_keys(deks)
        jobs = []
        for i, (dek, wrap) in enumerate(zip(deks, wrapped)):
            number = start + i
            pid = f"P-{number // PER_PATIENT:07d}"
            rid = new_record_id(base + number)
            metadata = replace(template, patient_id=pid,
                               captured_at=format_timestamp(datetime.fromtimestamp(base + number * 60, timezone.utc)))
            stamp = format_timestamp(metadata.captured_at_dt)
            record = StoredRecord(
                id=rid, tenant=TENANT, metadata=without_personal(metadata),
                sealed=seal_personal(derive_subkeys(dek, rid).metadata, rid, metadata.personal()),
                patient_hmac=patient_ids.patient_hmac(index_key, scheme, pid), content_type="image/jpeg", size=1,
                sha256="0" * 64, created_at=stamp, updated_at=stamp, retain_until="2034-01-01T00:00:00Z",
            )
            jobs.append((record, wrap))

        def insert(txn: Any, jobs: list[tuple[StoredRecord, str]] = jobs) -> None:
            for record, wrap in jobs:
                txn.put_dek(record.id, wrap)
                txn.put_record(record)
            txn.bump_stats(TENANT, len(jobs), len(jobs))

        await vault.index.write(insert)
    return time.perf_counter() - started


async def uploads_for(vault: Vault, seconds: float | None, uploaders: int, until: asyncio.Future | None = None) -> float:
    """MB/s of 1 MiB uploads by ``uploaders`` concurrent tasks for ``seconds`` or until ``until``."""
    payload = jpeg(os.urandom(1 << 20))  # uploads are checked against their declared type
    metadata = parse_metadata({"patient_id": "UPLOADER", "captured_at": "2026-01-01T00:00:00Z",
                               "modality": "dermoscopic", "body_site": "chest"})
    done = 0
    started = time.perf_counter()

    def over() -> bool:
        if until is not None:
            return until.done()
        return time.perf_counter() - started >= seconds

    async def one() -> None:
        nonlocal done
        while not over():
            async def body():
                yield payload

            await vault.create_image(CLINICIAN, metadata, "image/jpeg", body())
            done += 1

    await asyncio.gather(*(one() for _ in range(uploaders)))
    return done * len(payload) / 1e6 / (time.perf_counter() - started)


async def run(records: int, uploaders: int, idle_seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = OpenBaoServer(find_bao(), Path(tmp))
        server.start()
        try:
            server.create_key("bench-kek")
            config = make_config(Path(tmp) / "data", kms="transit", vault_addr=server.addr,
                                 vault_token=server.root_token, vault_key="bench-kek",
                                 lmdb_map_size=8 << 30, shred_epoch_interval=0)
            keys = await components.open_key_provider(config, create=True)
            backend = await components.open_backend(config, create=True)
            vault = await Vault.open(config, keys=keys, backend=backend)
            try:
                fill_seconds = await fill(vault, records)
                idle = await uploads_for(vault, idle_seconds, uploaders)
                phases: dict[str, float] = {}
                started = time.perf_counter()

                def progress(phase: str, done: int, total: int) -> None:
                    phases.setdefault(phase, time.perf_counter() - started)

                calls_before = dict(keys.calls)
                alone = await vault.run_epoch(OPERATOR, progress=progress)
                alone_seconds = time.perf_counter() - started
                calls = {k: v - calls_before.get(k, 0) for k, v in keys.calls.items()}
                started = time.perf_counter()
                epoch = asyncio.ensure_future(vault.run_epoch(OPERATOR))
                during = await uploads_for(vault, None, uploaders, until=epoch)
                state = await epoch
                loaded_seconds = time.perf_counter() - started
                assert alone.state == state.state == "done" and state.number == 2
                report = await vault.key_report(OPERATOR)
                assert set(report.dek_counts) == {state.target_version}
            finally:
                await vault.close()
        finally:
            server.stop()
    return {
        "benchmark": "shred_epoch",
        "records": records,
        "patients": records // PER_PATIENT,
        "fill_seconds": round(fill_seconds, 1),
        "epoch_seconds_alone": round(alone_seconds, 2),
        "phase_started_at_seconds": {k: round(v, 2) for k, v in phases.items()},
        "epoch_seconds_under_uploads": round(loaded_seconds, 2),
        "transit_calls": calls,
        "upload_mb_s_idle": round(idle, 1),
        "upload_mb_s_during_epoch": round(during, 1),
        "upload_ratio_during_epoch": round(during / idle, 3) if idle else None,
        "goals": "epoch of 200,000 records < 30 s (alone); uploads during an epoch >= 0.8x idle",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--uploaders", type=int, default=8)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--out", default=default_path("epoch"))
    args = parser.parse_args()
    result = asyncio.run(run(args.records, args.uploaders, args.idle_seconds))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
