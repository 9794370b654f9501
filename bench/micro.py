"""Micro-benchmarks of imagevault's parts, each against what it is built from.

- ``seal_open``: blob seal and open MB/s (``BlobSealer``/``BlobOpener``) against raw AES-256-GCM
  over the same 64 KiB chunks plus SHA-256 over the same buffer (the floor of the format).
- ``group_commit``: LMDB records/s when many tasks call ``Index.write`` at once (group commit:
  one fsync for many records) against the same records written one by one.
- ``timeline_search``: latency of one patient's timeline (~20 records) among 1,000,000 records.
  The index is filled through ``IndexTxn.put_record``/``put_dek`` with ``StoredRecord``s built
  as the service builds them; then ``Vault.search`` (DEK cache cold and warm) and the bare index
  scan are timed. Filler records carry realistic-sized but random sealed metadata and wrapped
  keys (they are never returned); the searched patients' records are fully real (wrapped DEKs,
  sealed personal data), so a search decrypts exactly what it would in production.
  The filled data directory is cached in ``bench/.cache`` (it takes a minute or two to build).
- ``big_image_rss``: peak RSS (VmHWM) of a daemon subprocess while a 2 GiB image streams in
  and back out.

    python -m bench.micro [--records 1000000] [--probes 1000] [--only seal_open,group_commit,...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from vault.store.format import DEFAULT_CHUNK_EXP, BlobHeader, chunk_nonce, derive_subkeys  # noqa: E402
from vault.store.personal import seal_personal  # noqa: E402
from vault.store.sealer import BlobOpener, BlobSealer  # noqa: E402

CACHE = ROOT / "bench" / ".cache"


def _median_rate(nbytes: int, times: list[float]) -> float:
    return nbytes / statistics.median(times) / 1e6


# seal / open ----------------------------------------------------------------------------------
def seal_open(size_mib: int = 64, repeat: int = 5, piece: int = 256 * 1024) -> dict[str, Any]:
    """MB/s of the blob recipe against its raw primitives, on the same buffers, alternated."""
    data = os.urandom(size_mib << 20)
    view = memoryview(data)
    record_id = secrets.token_bytes(16)
    key = derive_subkeys(secrets.token_bytes(32), record_id).blob
    chunk = 1 << DEFAULT_CHUNK_EXP  # what BlobHeader.new seals with
    times: dict[str, list[float]] = {k: [] for k in ("seal", "raw_seal", "open", "raw_open", "sha256", "aes_gcm")}
    sealed_chunks: list[bytes] = []
    opener_header = b""
    for _ in range(repeat):
        started = time.perf_counter()
        sealer = BlobSealer(key, BlobHeader.new(record_id))
        parts = [sealer.header_bytes]
        for offset in range(0, len(data), piece):
            parts.append(sealer.update(view[offset:offset + piece]))
        parts.append(sealer.finalize())
        sealer.sha256_hex
        times["seal"].append(time.perf_counter() - started)
        blob = b"".join(parts)

        # Raw: the same work with nothing around it: AES-GCM per chunk + one SHA-256.
        aead = AESGCM(key)
        prefix = secrets.token_bytes(7)
        started = time.perf_counter()
        digest = hashlib.sha256()
        raw = []
        for index, offset in enumerate(range(0, len(data), chunk)):
            digest.update(view[offset:offset + chunk])
            raw.append(aead.encrypt(chunk_nonce(prefix, index, offset + chunk >= len(data)), view[offset:offset + chunk], b"h"))
        digest.hexdigest()
        times["raw_seal"].append(time.perf_counter() - started)

        started = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        times["sha256"].append(time.perf_counter() - started)
        started = time.perf_counter()
        for index, offset in enumerate(range(0, len(data), chunk)):
            aead.encrypt(chunk_nonce(prefix, index, False), view[offset:offset + chunk], b"h")
        times["aes_gcm"].append(time.perf_counter() - started)

        # Open: authenticate and decrypt every chunk (as open_range does, minus the I/O).
        header_len = len(sealer.header_bytes)
        opener = BlobOpener(key, record_id, blob[:header_len])
        body = memoryview(blob)[header_len:]
        step = chunk + 16
        count = -(-len(body) // step)
        started = time.perf_counter()
        for index in range(count):
            opener.open_chunk(index, body[index * step:(index + 1) * step], last=index == count - 1)
        times["open"].append(time.perf_counter() - started)
        started = time.perf_counter()
        for index, ciphertext in enumerate(raw):
            aead.decrypt(chunk_nonce(prefix, index, index == len(raw) - 1), ciphertext, b"h")
        times["raw_open"].append(time.perf_counter() - started)
        sealed_chunks, opener_header = raw, blob[:header_len]
    del sealed_chunks, opener_header
    n = len(data)
    rates = {k: round(_median_rate(n, v), 1) for k, v in times.items()}
    return {
        "buffer_mib": size_mib, "update_piece_kib": piece // 1024, "chunk_kib": chunk // 1024, "repeat": repeat,
        "seal_mb_s": rates["seal"], "raw_aes_gcm_plus_sha256_mb_s": rates["raw_seal"],
        "seal_vs_raw": round(rates["seal"] / rates["raw_seal"], 3),
        "open_mb_s": rates["open"], "raw_aes_gcm_decrypt_mb_s": rates["raw_open"],
        "open_vs_raw": round(rates["open"] / rates["raw_open"], 3),
        "sha256_alone_mb_s": rates["sha256"], "aes_gcm_encrypt_alone_mb_s": rates["aes_gcm"],
    }


# records as the service builds them ------------------------------------------------------------
def _record(
    record_id: bytes, tenant: str, metadata: Any, sealed: bytes, patient_hmac: bytes, size: int, retain_until: str,
) -> Any:
    from vault.index.records import StoredRecord
    from vault.metadata import format_timestamp
    from vault.services.reading import without_personal

    stamp = format_timestamp(metadata.captured_at_dt)
    return StoredRecord(
        id=record_id, tenant=tenant, metadata=without_personal(metadata), sealed=sealed,
        patient_hmac=patient_hmac, content_type="image/jpeg", size=size,
        sha256=hashlib.sha256(record_id).hexdigest(), created_at=stamp, updated_at=stamp, retain_until=retain_until,
    )


def _insert(record: Any, wrapped: str) -> Any:
    def insert(txn: Any) -> None:  # exactly what Vault._create_image commits
        txn.put_dek(record.id, wrapped)
        txn.put_record(record)
        txn.bump_stats(record.tenant, 1, record.size)

    return insert


def _template_metadata(patient: str, captured: str, index: int, lesion: str | None) -> Any:
    from vault.metadata import parse_metadata

    return parse_metadata({
        "patient_id": patient, "captured_at": captured, "modality": "total_body" if lesion is None else "dermoscopic",
        "body_site": ("upper_back", "chest", "left_thigh", "face")[index % 4], "lesion_id": lesion,
        "session_id": f"TB-{index // 20:06d}", "device": "VECTRA-WB360", "tags": ["bench"],
        "description": "synthetic", "consent": {"care": True, "research": index % 3 == 0},
    } if lesion else {
        "patient_id": patient, "captured_at": captured, "modality": "total_body",
        "body_site": ("upper_back", "chest", "left_thigh", "face")[index % 4],
        "session_id": f"TB-{index // 20:06d}", "device": "VECTRA-WB360", "tags": ["bench"],
        "consent": {"care": True, "research": index % 3 == 0},
    })


# group commit --------------------------------------------------------------------------------
async def group_commit(records: int = 2000, concurrency: int = 64) -> dict[str, Any]:
    """Records/s through ``Index.write``: ``concurrency`` tasks at once vs one at a time."""
    from vault.ids import new_record_id
    from vault.index.integrity import IndexSeal
    from vault.index.lmdb import Index

    template = _template_metadata("000 000 0001", "2026-11-20T10:00:00Z", 0, None)
    wrapped = "local:v1:" + base64.b64encode(os.urandom(72)).decode()
    sealed = os.urandom(90)

    def make(count: int) -> list[Any]:
        return [_insert(_record(new_record_id(time.time()), "bench", template, sealed, os.urandom(32), 4_000_000,
                                "2036-11-20T10:00:00Z"), wrapped) for _ in range(count)]

    out: dict[str, Any] = {"records": records, "concurrency": concurrency}
    with tempfile.TemporaryDirectory(prefix="iv-micro-gc-", dir=os.environ.get("IV_BENCH_TMP")) as tmp:
        index = Index(Path(tmp) / "index", map_size=1 << 30)
        index.seal = IndexSeal(os.urandom(32))  # records are sealed as the service seals them
        try:
            rates: dict[str, list[float]] = {"concurrent": [], "one_by_one": []}
            commits: dict[str, int] = {}
            sequential_count = max(50, records // 10)  # one fsync each: keep it short
            for _ in range(3):
                jobs = make(records)
                before = index.commits
                started = time.perf_counter()
                semaphore = asyncio.Semaphore(concurrency)

                async def one(job: Any) -> None:
                    async with semaphore:
                        await index.write(job)

                await asyncio.gather(*(one(job) for job in jobs))
                rates["concurrent"].append(records / (time.perf_counter() - started))
                commits["concurrent"] = index.commits - before

                jobs = make(sequential_count)
                before = index.commits
                started = time.perf_counter()
                for job in jobs:
                    await index.write(job)
                rates["one_by_one"].append(sequential_count / (time.perf_counter() - started))
                commits["one_by_one"] = index.commits - before
        finally:
            index.close()
    out["concurrent_records_s"] = round(statistics.median(rates["concurrent"]))
    out["one_by_one_records_s"] = round(statistics.median(rates["one_by_one"]))
    out["speedup"] = round(out["concurrent_records_s"] / out["one_by_one_records_s"], 1)
    out["records_per_commit_concurrent"] = round(records / max(1, commits["concurrent"]), 1)
    return out


# timeline search at scale ---------------------------------------------------------------------
SEARCH_FORMAT = 1  # bump when the fill recipe changes: the cached index is rebuilt


async def _fill(data_dir: Path, records: int, per_patient: int, probes: int, tenant: str) -> dict[str, Any]:
    """Build a data directory holding ``records`` records of ``records // per_patient`` patients."""
    from tests.conftest import make_config, open_vault
    from vault.ids import new_record_id
    from vault.index import patient_ids

    config = make_config(data_dir, lmdb_map_size=4 << 30)
    vault = await open_vault(config)
    try:
        index_key = await vault.context.tenant_keys.get(tenant)
        # The records below bypass the service: record the tenant's scheme first, as its first
        # upload would, and compute their blind-index values under it.
        wanted = patient_ids.settings(config.patient_id_scheme, config.patient_id_scheme_by_tenant)
        scheme = (await patient_ids.tenant_scheme(vault.index, tenant, wanted)).in_use
        patients = records // per_patient
        rng = random.Random(7)
        probe_patients = sorted(rng.sample(range(patients), probes))
        probe_set = set(probe_patients)
        # Real keys for the probe patients' records: one batched wrap, as the DEK pool does.
        real_deks = [secrets.token_bytes(32) for _ in range(probes * per_patient)]
        real_wrapped = await vault.keys.wrap_data_keys(real_deks)
        filler_wrapped = real_wrapped[0][:-8] + "AAAAAAA="  # right length, never unwrapped
        filler_sealed = os.urandom(12 + 60 + 16)
        templates = [_template_metadata("x", "2020-01-01T00:00:00Z", i, None) for i in range(per_patient)]
        base = 1_577_836_800  # 2020-01-01
        order = list(range(records))
        rng.shuffle(order)  # patients' visits interleave over time, as in a clinic
        batch: list[Any] = []
        real = 0

        def flush(jobs: list[Any]) -> None:
            def many(txn: Any) -> None:
                for job in jobs:
                    job(txn)

            vault.index.write_sync(many)

        started = time.perf_counter()
        from vault.metadata import format_timestamp
        from datetime import datetime, timezone

        for n in order:
            patient, visit = divmod(n, per_patient)
            pid = f"P-{patient:07d}"
            captured = format_timestamp(datetime.fromtimestamp(base + patient * 97 + visit * 86_400 * 30, timezone.utc))
            metadata = replace(templates[visit], patient_id=pid, captured_at=captured)
            rid = new_record_id(base + n)
            phmac = patient_ids.patient_hmac(index_key, scheme, pid)
            if patient in probe_set:
                dek = real_deks[real]
                wrapped = real_wrapped[real]
                real += 1
                sealed = seal_personal(derive_subkeys(dek, rid).metadata, rid, metadata.personal())
            else:
                wrapped, sealed = filler_wrapped, filler_sealed
            batch.append(_insert(_record(rid, tenant, metadata, sealed, phmac, 4_000_000, "2036-01-01T00:00:00Z"), wrapped))
            if len(batch) >= 20_000:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        seconds = time.perf_counter() - started
    finally:
        await vault.close()
    # Big random-order transactions leave half the file as free pages: compact the cached copy.
    from vault.index.lmdb import Index

    index = Index(config.index_dir, map_size=4 << 30)
    try:
        index.copy_to(data_dir / "index.compact", compact=True)
    finally:
        index.close()
    shutil.rmtree(config.index_dir)
    (data_dir / "index.compact").rename(config.index_dir)
    return {"fill_seconds": round(seconds, 1), "probe_patients": [f"P-{p:07d}" for p in probe_patients]}


# 1000 probe patients: a p99 over 200 samples is the 2nd-worst sample, which one page fault or
# one scheduler hiccup on a shared machine decides; over 1000 it is the 10th-worst.
SEARCH_PROBES = 1000


async def timeline_search(records: int = 1_000_000, per_patient: int = 20, probes: int = SEARCH_PROBES,
                          tenant: str = "bench-clinic") -> dict[str, Any]:
    from tests.conftest import make_config, open_vault
    from vault.auth import Principal, Role
    from vault.index import patient_ids, schema
    from vault.search import SearchQuery

    key = f"search-v{SEARCH_FORMAT}-{records}-{per_patient}-{probes}"
    data_dir = CACHE / key
    manifest = data_dir / "bench.json"
    if manifest.exists():
        info = json.loads(manifest.read_text())
        info["cached"] = True
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        info = await _fill(data_dir, records, per_patient, probes, tenant)
        manifest.write_text(json.dumps(info))
        info["cached"] = False
    # The fill (or the throughput runs before this benchmark) leaves gigabytes of dirty pages:
    # without this, the first timed searches (the cold ones) would share the disk with their
    # writeback and every audit flush would wait.
    os.sync()
    vault = await open_vault(make_config(data_dir, lmdb_map_size=4 << 30))
    try:
        principal = Principal(tenant, Role.CLINICIAN, "bench")
        count = vault.count_records()
        patients = info["probe_patients"]
        cold, warm, scan = [], [], []
        # CPU time of the event-loop thread per search: what the code costs, nearly independent of
        # what else the machine runs (wall-clock percentiles on a shared box are mostly queueing).
        cold_cpu: list[float] = []
        warm_cpu: list[float] = []
        found = []
        # Warm means "DEK cache hit": the patients searched again must fit in the cache, so they
        # are timed in groups of half the cache (1000 patients x 20 keys would cycle a 4096-entry
        # LRU and make every "warm" search a miss).
        group = max(1, vault.config.dek_cache_size // per_patient // 2)
        warm_hits = warm_misses = 0
        for first in range(0, len(patients), group):
            members = patients[first:first + group]
            for pid in members:  # first search of each patient: every DEK unwrapped (cache cold)
                started, cpu = time.perf_counter(), time.thread_time()
                page = await vault.search(principal, SearchQuery(patient_id=pid))
                cold.append(time.perf_counter() - started)
                cold_cpu.append(time.thread_time() - cpu)
                found.append(len(page.items))
            hits, misses = vault.dek_cache.hits, vault.dek_cache.misses
            for _ in range(3):
                for pid in members:
                    started, cpu = time.perf_counter(), time.thread_time()
                    await vault.search(principal, SearchQuery(patient_id=pid))
                    warm.append(time.perf_counter() - started)
                    warm_cpu.append(time.thread_time() - cpu)
            warm_hits += vault.dek_cache.hits - hits
            warm_misses += vault.dek_cache.misses - misses
        index_key = await vault.context.tenant_keys.get(tenant)
        scheme = vault.index.read(lambda t: patient_ids.recorded(t, tenant))
        for pid in patients * 3:
            prefix = schema.patient_prefix(tenant, patient_ids.patient_hmac(index_key, scheme, pid))

            def collect(txn: Any) -> int:
                return sum(1 for k in txn.scan_keys(schema.DB_BY_PATIENT, prefix, prefix + b"\xff" * 9)
                           if txn.get_record(k[len(prefix) + 8:]) is not None)

            started = time.perf_counter()
            vault.index.read(collect)
            scan.append(time.perf_counter() - started)
        # The audit entry every search waits for (durable: one LMDB commit, two flushes), alone.
        from vault.audit.chain import AuditAction
        from vault.audit.hooks import append_event

        audit = []
        for _ in range(len(patients)):
            started = time.perf_counter()
            await append_event(vault.audit, principal, AuditAction.SEARCH, [], "ok", {"filters": ["patient_id"]})
            audit.append(time.perf_counter() - started)
    finally:
        await vault.close()

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "records": count, "records_per_patient": per_patient, "patients_searched": len(patients),
        "mean_results": round(statistics.fmean(found), 1),
        "search_cold_p50_ms": pct(cold, 0.5), "search_cold_p99_ms": pct(cold, 0.99),
        "search_warm_p50_ms": pct(warm, 0.5), "search_warm_p99_ms": pct(warm, 0.99),
        "index_scan_p50_ms": pct(scan, 0.5), "index_scan_p99_ms": pct(scan, 0.99),
        "warm_dek_cache_hit_rate": round(warm_hits / max(1, warm_hits + warm_misses), 3),
        "search_cold_cpu_p50_ms": pct(cold_cpu, 0.5), "search_warm_cpu_p50_ms": pct(warm_cpu, 0.5),
        "audit_append_p50_ms": pct(audit, 0.5), "audit_append_p99_ms": pct(audit, 0.99),
        "fill_seconds": info.get("fill_seconds"), "index_cached": info["cached"],
        "index_mb": round(sum(p.stat().st_size for p in (data_dir / "index").iterdir()) / 1e6),
        "note": "search = Vault.search(patient_id) returning decrypted records; cold = first search "
                "of that patient (every DEK unwrapped by the local keyring), warm = DEK cache hit; "
                "cpu = event-loop thread CPU time per search; audit_append = the durable audit entry "
                "a search waits for, timed alone",
    }


# peak RSS with a 2 GiB image ------------------------------------------------------------------
async def big_image_rss(size: int = 2 << 30, workdir: Path | None = None) -> dict[str, Any]:
    import aiohttp

    from bench.driver import clinical_metadata, multipart_body  # noqa: F401
    from bench.peers import ImageVaultDaemon

    with tempfile.TemporaryDirectory(prefix="iv-micro-rss-", dir=workdir) as tmp:
        tmp_path = Path(tmp)
        daemon = ImageVaultDaemon(tmp_path / "data", tmp_path / "daemon.log", name="rss")
        try:
            await asyncio.sleep(0.5)
            baseline = daemon.rss_mb()
            block = os.urandom(1 << 20)
            expected = hashlib.sha256()

            async def body() -> Any:
                for i in range(size >> 20):
                    piece = i.to_bytes(8, "big") + block[8:]
                    if i == 0:  # SOI then SOS: a JPEG head (uploads are checked against their type)
                        piece = b"\xff\xd8\xff\xda" + piece[4:]
                    expected.update(piece)
                    yield piece

            writer = aiohttp.MultipartWriter("form-data")
            part = writer.append(json.dumps(clinical_metadata(patient=1)), {"Content-Type": "application/json"})
            part.set_content_disposition("form-data", name="metadata")
            part = writer.append(body(), {"Content-Type": "image/jpeg"})
            part.set_content_disposition("form-data", name="file", filename="big.jpg")
            headers = {"Authorization": f"Bearer {daemon.token}"}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
                started = time.perf_counter()
                async with session.post(f"{daemon.url}/v1/images", data=writer, headers=headers) as response:
                    record = await response.json()
                    if response.status != 201:
                        raise RuntimeError(f"2 GiB upload failed: {response.status} {record}")
                upload_seconds = time.perf_counter() - started
                after_upload = daemon.peak_rss_mb()
                got = hashlib.sha256()
                started = time.perf_counter()
                async with session.get(f"{daemon.url}/v1/images/{record['id']}", headers=headers) as response:
                    async for piece in response.content.iter_chunked(1 << 20):
                        got.update(piece)
                download_seconds = time.perf_counter() - started
            if got.hexdigest() != expected.hexdigest() or record["sha256"] != expected.hexdigest():
                raise RuntimeError("2 GiB round trip: digest mismatch")
            peak = daemon.peak_rss_mb()
        finally:
            daemon.stop()
    return {
        "image_bytes": size, "baseline_rss_mb": round(baseline, 1),
        "peak_rss_after_upload_mb": round(after_upload, 1), "peak_rss_mb": round(peak, 1),
        "upload_mb_s": round(size / upload_seconds / 1e6, 1), "download_mb_s": round(size / download_seconds / 1e6, 1),
        "note": "VmHWM of the daemon process (its whole life: start, 2 GiB in, 2 GiB out)",
    }


ALL = ("seal_open", "group_commit", "timeline_search", "big_image_rss")


async def run(only: tuple[str, ...] = ALL, *, records: int = 1_000_000, rss_bytes: int = 2 << 30,
              seal_mib: int = 64, workdir: Path | None = None, log: Any = print,
              probes: int = SEARCH_PROBES) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "seal_open" in only:
        log("micro: seal/open vs raw AES-GCM + SHA-256")
        out["seal_open"] = seal_open(seal_mib)
    if "group_commit" in only:
        log("micro: LMDB group commit")
        out["group_commit"] = await group_commit()
    if "timeline_search" in only:
        log(f"micro: timeline search at {records:,} records (index cached in bench/.cache after the first run)")
        out["timeline_search"] = await timeline_search(records, probes=probes)
    if "big_image_rss" in only:
        log(f"micro: peak RSS with a {rss_bytes / (1 << 30):.2f} GiB image")
        out["big_image_rss"] = await big_image_rss(rss_bytes, workdir)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="imagevault micro-benchmarks")
    parser.add_argument("--only", default=",".join(ALL))
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rss-gib", type=float, default=2.0)
    parser.add_argument("--probes", type=int, default=SEARCH_PROBES, help="patients timed by timeline_search")
    args = parser.parse_args()
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    import uvloop

    uvloop.install()  # the daemon's event loop (vault.api.app.run), so waits and wake-ups cost the same
    result = asyncio.run(run(only, records=args.records, rss_bytes=int(args.rss_gib * (1 << 30)) >> 20 << 20,
                             probes=args.probes))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
