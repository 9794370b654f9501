"""Keeping the store honest: start-up recovery, scrubbing, garbage collection, statistics and
readiness.

Recovery runs once when the daemon starts, before it accepts requests (so no upload is in
flight): it removes temporary blobs of interrupted writes, moves blobs that no record points at
(uploads that crashed between the blob commit and the index commit: never acknowledged) and
blobs whose length cannot be that of their record (truncated or padded) into
``<data_dir>/quarantine/``, and reports records whose blob is missing. Nothing is silently
deleted but temporary files: an operator can inspect the quarantine.

Scrubbing (``imagevault verify``) decrypts every blob, or a random sample, authenticating each
chunk and comparing the SHA-256 of the plaintext with the record, and reports bit-rot by record
id (ids carry no personal data).

Garbage collection removes orphan blobs older than an age limit (see ``collect_garbage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from vault import __version__
from vault.errors import BlobCorrupt, ImageVaultError, IndexTampered, KeyMaterialError, NotFound
from vault.files import make_private_dir, open_private
from vault.ids import decode_id, encode_id
from vault.metadata import format_timestamp, parse_timestamp
from vault.index import schema
from vault.index.engine import IndexTxn
from vault.services.context import ServiceContext
from vault.index.rendition_jobs import READY, get_state
from vault.store.backends.base import is_rendition, record_of_blob, rendition_blob_id
from vault.store.format import (
    DEFAULT_CHUNK_EXP, HEADER_LEN, BlobHeader, derive_rendition_key, derive_subkeys, sealed_size,
)
from vault.store.sealer import open_range, open_under

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
# An orphan must be at least this old (by its id) before gc removes it; see collect_garbage.
GC_MIN_AGE = timedelta(hours=1)
GC_BATCH = 256
SCRUB_BATCH = 256
# Seconds a readiness probe of the store or the KMS may take before it counts as failed.
PROBE_TIMEOUT = 5


@dataclass(frozen=True)
class RecoveryReport:
    temporary_removed: int
    orphans_quarantined: int
    damaged_quarantined: list[str]
    records_without_blob: list[str]


@dataclass
class ScrubReport:
    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unreadable_keys: list[str] = field(default_factory=list)
    tampered: list[str] = field(default_factory=list)  # records failing their index MAC

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.unreadable_keys or self.tampered)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok, "checked": self.checked, "corrupt": self.corrupt,
            "missing": self.missing, "unreadable_keys": self.unreadable_keys, "tampered": self.tampered,
        }


@dataclass(frozen=True)
class GcResult:
    """What ``collect_garbage`` did. No record ids: the counts are what an operator needs."""

    scanned: int  # committed blobs looked at
    removed: int  # orphans deleted
    kept_recent: int  # orphans younger than the age limit, left for a later run
    temporary: int  # leftovers of interrupted writes removed (temp files, multipart uploads)

    def to_json(self) -> dict[str, int]:
        return {"scanned": self.scanned, "removed": self.removed, "kept_recent": self.kept_recent,
                "temporary": self.temporary}


@dataclass(frozen=True)
class Readiness:
    ok: bool
    checks: dict[str, str]
    notes: dict[str, Any] = field(default_factory=dict)  # informational, never fails readiness
    checked_at: float = 0.0  # time.monotonic() of the probe


def _record_sizes(txn: IndexTxn) -> dict[str, int]:
    sizes = {}
    for rid in txn.iter_record_ids():
        try:
            record = txn.get_record(rid)
        except IndexTampered:
            continue  # counted by the seal; its size is not to be trusted
        if record is not None:
            sizes[encode_id(rid)] = record.size
    return sizes


async def _quarantine(context: ServiceContext, blob_id: str) -> None:
    """Move a blob out of the store into the data directory's quarantine, then delete it."""
    target = context.config.quarantine_dir
    make_private_dir(target)
    path = target / f"{blob_id}.ivb"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # an earlier attempt that failed half-way
    with os.fdopen(open_private(path), "wb") as handle:
        async for piece in context.backend.read_all(blob_id):
            handle.write(piece)
    await context.backend.delete(blob_id)


async def _sized_as_sealed(context: ServiceContext, blob_id: str, size: int, plaintext: int) -> bool:
    """Whether a blob of ``size`` bytes can hold ``plaintext`` bytes sealed. Records do not store
    their blob's chunk size: the default is tried first (no I/O); only a blob that does not fit
    it has its header read, so one sealed with another valid chunk size (an older default, another
    writer) is not mistaken for a damaged one. Unauthenticated, like every size check here: the
    chunks' tags decide integrity when the blob is read."""
    if size == sealed_size(plaintext, DEFAULT_CHUNK_EXP):
        return True
    try:
        header = BlobHeader.decode(await context.backend.read(blob_id, 0, HEADER_LEN))
    except (BlobCorrupt, ValueError):
        return False
    return header.chunk_exp != DEFAULT_CHUNK_EXP and size == sealed_size(plaintext, header.chunk_exp)


class Maintenance:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def recover(self) -> RecoveryReport:
        context = self._context
        temporary = await context.backend.cleanup_temporary()
        sizes = context.index.read(_record_sizes)
        # Segments of resumable uploads are blobs no record points at, and must survive a restart.
        staged = context.index.read(lambda t: t.staged_blob_ids())
        seen: set[str] = set()
        orphans = 0
        damaged: list[str] = []
        async for blob_id, size in context.backend.list_blobs():
            if blob_id in staged:
                continue
            if is_rendition(blob_id):
                # Derived from its record's blob: kept while the record exists (its chunks'
                # tags decide its integrity when served), quarantined like any orphan otherwise.
                if record_of_blob(blob_id) not in sizes:
                    await _quarantine(context, blob_id)
                    orphans += 1
                continue
            seen.add(blob_id)
            expected = sizes.get(blob_id)
            if expected is None:
                await _quarantine(context, blob_id)
                orphans += 1
            elif not await _sized_as_sealed(context, blob_id, size, expected):
                await _quarantine(context, blob_id)
                damaged.append(blob_id)
        missing = sorted(set(sizes) - seen)
        report = RecoveryReport(temporary, orphans, damaged, missing)
        if temporary or orphans or damaged or missing:
            log.warning(
                "start-up recovery: %d temporary file(s) removed, %d orphan blob(s) and %d damaged blob(s) "
                "quarantined, %d record(s) without blob%s",
                temporary, orphans, len(damaged), len(missing),
                (": " + ", ".join((damaged + missing)[:20])) if damaged or missing else "",
            )
        else:
            log.info("start-up recovery: store consistent (%d records)", len(sizes))
        return report

    async def scrub(self, *, sample: int | None = None, progress: Progress | None = None) -> ScrubReport:
        """Decrypt and authenticate every blob (or ``sample`` random ones); never yields plaintext."""
        context = self._context
        ids = context.index.read(lambda t: list(t.iter_record_ids()))
        if sample is not None and sample < len(ids):
            ids = random.sample(ids, sample)
        report = ScrubReport()
        total = len(ids)
        for start in range(0, total, SCRUB_BATCH):
            batch = ids[start:start + SCRUB_BATCH]
            deks = await context.data_keys.unwrap(batch, cache=False)
            for rid in batch:
                rid_text = encode_id(rid)
                try:
                    record = context.index.read(lambda t, rid=rid: t.get_record(rid))
                except IndexTampered:
                    report.checked += 1
                    report.tampered.append(rid_text)
                    continue
                if record is None:  # shredded meanwhile
                    continue
                dek = deks.get(rid)
                report.checked += 1
                if dek is None:
                    report.unreadable_keys.append(rid_text)
                    continue
                digest = hashlib.sha256()
                try:
                    async for piece in open_range(
                        context.backend, rid_text, derive_subkeys(dek, rid).blob, rid, 0, record.size,
                        expected_size=record.size,
                    ):
                        digest.update(piece)
                    if digest.hexdigest() != record.sha256:
                        raise BlobCorrupt()
                    await self._scrub_renditions(rid, dek, report)
                except NotFound:
                    report.missing.append(rid_text)
                except BlobCorrupt:
                    report.corrupt.append(rid_text)
                except KeyMaterialError:
                    report.unreadable_keys.append(rid_text)
                if progress is not None:
                    progress(report.checked, total)
        context.metrics.scrub_corrupt.set(len(report.corrupt) + len(report.missing))
        # Counts only (no record ids), so that the daemon's metrics show a scrub the command
        # line ran: the alert on corruption must not depend on which process scrubbed.
        outcome = {
            "completed_at": format_timestamp(context.clock()), "sample": sample is not None, "checked": report.checked,
            "corrupt": len(report.corrupt), "missing": len(report.missing),
            "unreadable_keys": len(report.unreadable_keys), "tampered": len(report.tampered),
        }
        await context.index.write(lambda t: t.put_doc(schema.DB_META, schema.META_SCRUB, outcome))
        if not report.ok:
            log.error(
                "scrub found %d corrupt, %d missing blob(s), %d unreadable key(s): %s",
                len(report.corrupt), len(report.missing), len(report.unreadable_keys),
                ", ".join((report.corrupt + report.missing + report.unreadable_keys)[:50]),
            )
        return report

    async def _scrub_renditions(self, rid: bytes, dek: bytes, report: ScrubReport) -> None:
        """A ready record's thumbnail and preview, authenticated under their keys (named
        ``<ID>.t`` / ``<ID>.p`` in the report when missing or corrupt)."""
        context = self._context
        state = context.index.read(lambda t: get_state(t, rid))
        if state is None or state.state != READY:
            return
        for kind in ("thumbnail", "preview"):
            info = state.info(kind)
            name = rendition_blob_id(encode_id(rid), kind)
            if info is None:
                continue
            try:
                blob = await context.backend.read(name, 0, sealed_size(info.size))
                if len(open_under(derive_rendition_key(dek, rid, kind), rid, blob)) != info.size:
                    raise BlobCorrupt()
            except NotFound:
                report.missing.append(name)
            except BlobCorrupt:
                report.corrupt.append(name)

    async def collect_garbage(
        self, *, min_age: timedelta = GC_MIN_AGE, progress: Callable[[int, int | None], None] | None = None,
        dry_run: bool = False,
    ) -> GcResult:
        """Delete orphan blobs (a blob no record points at), and nothing else.

        Orphans are left by a crash between the blob commit and the index commit, and by a
        shred whose best-effort blob delete failed. Every committed blob is listed from the
        backend; those whose id has a record in the index are kept, whatever state the record
        is in. ``progress(scanned, None)`` is called as blobs are listed (the total is not
        known before the listing ends). Leftovers of interrupted writes are removed first
        (``cleanup_temporary``: temp files, stale multipart uploads).

        Why orphans younger than ``min_age`` are kept: the write path commits the blob
        *before* the index transaction, so every upload in flight, in this process or in
        another daemon on the same store, has a moment when its blob exists without a
        record; deleting it then would lose an acknowledged image. The blob id is the record
        id, whose first 48 bits are the time the upload *started* (ms), and a blob is
        committed at most one body transfer after that: an id older than ``min_age`` belongs
        to an upload that has long reached its index commit or failed. The default hour covers
        a 2 GiB image (the default limit) arriving at 1 MB/s in about 35 minutes. Ids in the
        future (a clock stepped back, a skewed peer) are kept too. Never lower ``min_age``
        below the longest upload while daemons are running.

        ``dry_run``: count what would be removed (``removed``), remove nothing; leftovers of
        interrupted writes are then neither removed nor counted.
        """
        context = self._context
        if min_age < timedelta(0):
            raise ValueError("min_age must not be negative")
        oldest_ms = int((context.clock() - min_age).timestamp() * 1000)
        temporary = 0 if dry_run else await context.backend.cleanup_temporary()
        scanned = removed = kept_recent = 0

        async def settle(blob_ids: list[str]) -> None:
            nonlocal removed, kept_recent
            raw_ids = [decode_id(record_of_blob(blob_id)) for blob_id in blob_ids]  # a rendition: its record
            # Presence only (a tampered record is still a record: its blob stays). A staged
            # segment of a resumable upload is kept while its upload's state lists it.

            def look(txn: IndexTxn) -> list[bool]:
                staged = txn.staged_blob_ids()
                return [txn.has_record(rid) or blob_id in staged for blob_id, rid in zip(blob_ids, raw_ids)]

            recorded = context.index.read(look)
            for blob_id, rid, has_record in zip(blob_ids, raw_ids, recorded):
                if has_record:
                    continue
                if int.from_bytes(rid[:6], "big") > oldest_ms:
                    kept_recent += 1
                    continue
                if dry_run:
                    removed += 1
                elif await context.backend.delete(blob_id):
                    removed += 1
                    log.info("gc removed orphan blob %s", blob_id)

        batch: list[str] = []
        async for blob_id in context.backend.list_ids():
            batch.append(blob_id)
            scanned += 1
            if len(batch) == GC_BATCH:
                await settle(batch)
                batch = []
                if progress is not None:
                    progress(scanned, None)
        if batch:
            await settle(batch)
        if progress is not None:
            progress(scanned, scanned)
        return GcResult(scanned, removed, kept_recent, temporary)

    def count_records(self) -> int:
        return self._context.index.read(lambda t: t.count(schema.DB_RECORDS))

    def stats(self, only: str | None = None) -> dict[str, Any]:
        """Records and bytes in all, and per tenant (``meta`` ``stats:<tenant>`` documents);
        with ``only``, of that one tenant (the totals too), naming no other."""

        def gather(txn: IndexTxn) -> dict[str, Any]:
            tenants = {}
            total_records = total_bytes = 0
            for key, doc in txn.iter_docs(schema.DB_META):
                tenant = schema.stats_tenant(key)
                if tenant is not None and (only is None or tenant == only):
                    tenants[tenant] = doc
                    total_records += doc["records"]
                    total_bytes += doc["bytes"]
            if only is not None:
                tenants.setdefault(only, {"records": 0, "bytes": 0})
            return {"records": total_records, "bytes": total_bytes, "tenants": tenants}

        return self._context.index.read(gather)

    def info(self) -> dict[str, Any]:
        context = self._context
        return {
            "name": "imagevault",
            "version": __version__,
            "api": "v1",
            "kms_provider": context.keys.name,
            "storage_backend": context.backend.name,
            "index": context.index.engine,
            "max_image_bytes": context.config.max_image_bytes,
            "allowed_content_types": list(context.config.allowed_content_types),
            "strip_metadata": context.config.strip_metadata,
        }

    def publish_storage_metrics(self) -> None:
        """Free space of the data directory's file system and how full the LMDB maps are (a
        full map doubles on the next write, and that needs the disk space to back it); the
        last scrub's findings, whichever process ran it."""
        context = self._context
        metrics = context.metrics
        try:
            fs = os.statvfs(context.config.data_dir)
        except OSError as exc:
            log.warning("cannot measure the data directory's file system: %s", exc.strerror)
        else:
            metrics.data_dir_free.set(fs.f_bavail * fs.f_frsize)
            metrics.data_dir_size.set(fs.f_blocks * fs.f_frsize)
        for name, usage in (("index", context.index.map_usage()), ("audit", context.audit.map_usage())):
            if usage is None:  # an engine without a fixed-size map (PostgreSQL)
                continue
            used, size = usage
            metrics.map_used.labels(name).set(used / size if size else 0.0)
            metrics.map_size.labels(name).set(size)
        scrub = context.index.read(lambda t: t.get_doc(schema.DB_META, schema.META_SCRUB))
        if scrub is not None:
            metrics.scrub_corrupt.set(scrub["corrupt"] + scrub["missing"])
            metrics.scrub_last_completed.set(parse_timestamp(scrub["completed_at"], "completed_at").timestamp())

    async def readiness(self) -> Readiness:
        context = self._context
        checks: dict[str, str] = {}
        try:
            await asyncio.to_thread(context.index.read, lambda t: t.get_doc(schema.DB_META, schema.META_SCHEMA))
            checks["index"] = "ok"
        except ImageVaultError as exc:
            checks["index"] = exc.message
        kms_probe = functools.partial(context.keys.probe, context.config.readiness_interval)
        for part, probe in (("store", context.backend.check_writable), ("kms", kms_probe)):
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await probe()
                checks[part] = "ok"
            except ImageVaultError as exc:
                checks[part] = exc.message
            except TimeoutError:
                checks[part] = "timed out"
        return Readiness(all(v == "ok" for v in checks.values()), checks, checked_at=time.monotonic(),
                         notes={"index_engine": context.index.engine})
