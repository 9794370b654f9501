"""Online backup and restore that keep erasures erased.

A backup directory holds two kinds of artefact, kept apart on purpose (docs/design.md,
Durability):

``blobs/``
    The bulk: sealed blobs, copied incrementally. Blobs are immutable, so one already in the
    backup is never copied again; ``blobs/catalog.json`` holds each one's size and SHA-256.
``snapshots/<UTC time>/``
    The small key database: a compacted LMDB copy of the index (records, wrapped DEKs, blind
    indexes, tokens), the local keyring files (``keys/``, absent for Transit: the KEK stays in
    Vault, which the operator backs up on its own), and ``manifest.json`` with checksums.

A restore combines one snapshot (normally the newest) with the blob store: only blobs that the
restored index references are brought back, so a record erased after an older blob copy was
taken stays erased. And once the shred epoch has passed (rotate, rewrap, retire), a record that
an *older* snapshot still lists cannot be opened with the *newer* keys: ``restore`` checks every
wrapped key against the restored key material and drops (and reports) the ones that no longer
open, instead of restoring records that could never be read.

The LMDB copy runs inside one read transaction, so the index snapshot is consistent while the
daemon keeps serving; blobs of records shredded between the snapshot and the copy are reported
as ``shredded_during_backup``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vault.config import Config
from vault.errors import ImageVaultError, InvalidRequest, KeyMaterialError, NotFound
from vault.files import fsync_dir, write_atomic
from vault.ids import encode_id
from vault.index import schema
from vault.index.lmdb import Index, IndexTxn
from vault.services.context import ServiceContext, open_context

Progress = Callable[[int, int], None]
MANIFEST_VERSION = 1


@dataclass
class BackupReport:
    snapshot: str
    records: int = 0
    blobs_copied: int = 0
    blobs_already_present: int = 0
    bytes_copied: int = 0
    shredded_during_backup: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class RestoreReport:
    snapshot: str
    keys_from: str
    records: int = 0
    blobs_restored: int = 0
    dropped_unopenable_keys: list[str] = field(default_factory=list)
    missing_blobs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def _write_json_atomic(path: Path, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode())


def _blob_path(root: Path, blob_id: str) -> Path:
    return root / "blobs" / blob_id[-2:].lower() / f"{blob_id}.ivb"


def snapshots(dest: Path) -> list[str]:
    base = dest / "snapshots"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "manifest.json").is_file())


class Backups:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def backup(self, dest: Path, *, include_master_key: bool = True, progress: Progress | None = None) -> BackupReport:
        return await _backup(self._context, dest, include_master_key=include_master_key, progress=progress)

    @staticmethod
    async def restore(
        config: Config, src: Path, *, snapshot: str | None = None, keys_from: str | None = None,
        progress: Progress | None = None,
    ) -> RestoreReport:
        return await _restore(config, src, snapshot=snapshot, keys_from=keys_from, progress=progress)


async def _backup(context: ServiceContext, dest: Path, *, include_master_key: bool, progress: Progress | None) -> BackupReport:
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    snap = dest / "snapshots" / stamp
    work = dest / "snapshots" / f".{stamp}.partial"
    work.mkdir(parents=True)
    report = BackupReport(stamp)

    # 1. The index, consistent as of one read transaction, compacted; then the audit trail
    #    (copied after the index, so it covers at least every operation the index shows).
    await asyncio.to_thread(context.index.copy_to, work / "index", compact=True)
    await asyncio.to_thread(context.audit.copy_to, work / "audit")
    # 2. The key material (local keyring); Transit keeps the KEK in the KMS.
    files: dict[str, str] = {}
    keys_src = context.config.keys_dir
    if context.keys.name == "local" and keys_src.is_dir():
        (work / "keys").mkdir(mode=0o700)
        for name in ("keyring.json", "master.key"):
            if (keys_src / name).exists() and (name != "master.key" or include_master_key):
                shutil.copy2(keys_src / name, work / "keys" / name)
                os.chmod(work / "keys" / name, 0o600)
    for path in sorted(work.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(work))] = _sha256_file(path)

    # 3. The blobs the snapshot references, incrementally.
    snapshot_index = Index(work / "index", map_size=context.config.lmdb_map_size, readonly=True)
    try:
        sizes = snapshot_index.read(lambda t: [(rid, t.get_record(rid)) for rid in t.iter_record_ids()])
    finally:
        snapshot_index.close()
    catalog_path = dest / "blobs" / "catalog.json"
    (dest / "blobs").mkdir(exist_ok=True, mode=0o700)
    catalog: dict[str, dict[str, Any]] = json.loads(catalog_path.read_text()) if catalog_path.exists() else {}
    report.records = len(sizes)
    for done, (rid, record) in enumerate(sizes, 1):
        blob_id = encode_id(rid)
        target = _blob_path(dest, blob_id)
        if blob_id in catalog and target.exists():
            report.blobs_already_present += 1
        else:
            try:
                digest, size = await _copy_blob(context, blob_id, target)
            except NotFound:
                report.shredded_during_backup.append(blob_id)
                continue
            catalog[blob_id] = {"size": size, "sha256": digest}
            report.blobs_copied += 1
            report.bytes_copied += size
            if report.blobs_copied % 256 == 0:
                _write_json_atomic(catalog_path, catalog)
        if progress is not None:
            progress(done, len(sizes))
    _write_json_atomic(catalog_path, catalog)

    manifest = {
        "format": MANIFEST_VERSION,
        "created_at": stamp,
        "kms": context.keys.name,
        "store": context.backend.name,
        "files": files,
        "records": report.records,
        "blobs": {encode_id(rid): catalog[encode_id(rid)] for rid, _ in sizes if encode_id(rid) in catalog},
        "shredded_during_backup": report.shredded_during_backup,
        "master_key_included": include_master_key and context.keys.name == "local",
    }
    _write_json_atomic(work / "manifest.json", manifest)
    os.replace(work, snap)
    fsync_dir(snap.parent)
    return report


async def _copy_blob(context: ServiceContext, blob_id: str, target: Path) -> tuple[str, int]:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    digest = hashlib.sha256()
    copied = 0
    with open(tmp, "wb") as handle:
        async for piece in context.backend.read_all(blob_id):
            handle.write(piece)
            digest.update(piece)
            copied += len(piece)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return digest.hexdigest(), copied


def _verify_files(snapshot: Path, manifest: dict[str, Any], prefix: str) -> None:
    for name, digest in manifest["files"].items():
        if name.startswith(prefix) and _sha256_file(snapshot / name) != digest:
            raise ImageVaultError(f"backup file {name} does not match its manifest checksum")


async def _restore(
    config: Config, src: Path, *, snapshot: str | None, keys_from: str | None, progress: Progress | None,
) -> RestoreReport:
    """Restore into an empty data directory; see the module docstring for what is kept."""

    available = snapshots(src)
    if not available:
        raise InvalidRequest(f"no snapshot found under {src}")
    snapshot = snapshot or available[-1]
    keys_from = keys_from or available[-1]
    for name in (snapshot, keys_from):
        if name not in available:
            raise InvalidRequest(f"snapshot {name} not found under {src}")
    if config.data_dir.exists() and any(config.data_dir.iterdir()):
        raise InvalidRequest(f"data directory {config.data_dir} is not empty; restore needs an empty one")
    index_snap = src / "snapshots" / snapshot
    keys_snap = src / "snapshots" / keys_from
    index_manifest = json.loads((index_snap / "manifest.json").read_text())
    keys_manifest = json.loads((keys_snap / "manifest.json").read_text())
    _verify_files(index_snap, index_manifest, "index/")
    _verify_files(index_snap, index_manifest, "audit/")
    _verify_files(keys_snap, keys_manifest, "keys/")

    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copytree(index_snap / "index", config.index_dir)
    if (index_snap / "audit").is_dir():
        shutil.copytree(index_snap / "audit", config.audit_dir)
    if (keys_snap / "keys").is_dir():
        shutil.copytree(keys_snap / "keys", config.keys_dir)
        os.chmod(config.keys_dir, 0o700)
    report = RestoreReport(snapshot, keys_from)

    try:
        return await _restore_records(config, src, report, progress)
    except BaseException:
        # The directory was empty before: leave it empty rather than half restored.
        for child in list(config.data_dir.iterdir()):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


async def _restore_records(config: Config, src: Path, report: RestoreReport, progress: Progress | None) -> RestoreReport:
    snapshot, keys_from = report.snapshot, report.keys_from
    context = await open_context(config)
    try:
        entries = context.index.read(lambda t: list(t.iter_deks()))
        results = await context.keys.unwrap_data_keys([w for _, w in entries])
        dead = [rid for (rid, _), result in zip(entries, results) if isinstance(result, KeyMaterialError)]
        if entries and len(dead) == len(entries):
            raise ImageVaultError(
                f"no wrapped key of snapshot {snapshot} opens with the key material of {keys_from}: "
                "the snapshot predates a key retirement (the shred epoch); restore a newer snapshot"
            )
        for rid in dead:
            # Retired since this index snapshot was taken: shredded for good. Drop the record.
            def drop(txn: IndexTxn, rid: bytes = rid) -> None:
                record = txn.get_record(rid)
                if record is not None:
                    txn.delete_record(record)
                else:
                    txn.delete_key(schema.DB_DEKS, rid)

            await context.index.write(drop)
            report.dropped_unopenable_keys.append(encode_id(rid))
        live = context.index.read(lambda t: list(t.iter_record_ids()))
        report.records = len(live)
        catalog = json.loads((src / "blobs" / "catalog.json").read_text()) if (src / "blobs" / "catalog.json").exists() else {}
        for done, rid in enumerate(live, 1):
            blob_id = encode_id(rid)
            source = _blob_path(src, blob_id)
            expected = catalog.get(blob_id)
            if expected is None or not source.exists() or _sha256_file(source) != expected["sha256"]:
                report.missing_blobs.append(blob_id)
                continue
            writer = await context.backend.open_writer(blob_id)
            try:
                with open(source, "rb") as handle:
                    while piece := handle.read(4 << 20):
                        await writer.write(piece)
                await writer.commit()
            except BaseException:
                await writer.abort()
                raise
            report.blobs_restored += 1
            if progress is not None:
                progress(done, len(live))
        # Per-tenant statistics follow the restored records, not the snapshot's counters.
        await context.index.write(_recount_stats)
    finally:
        await context.close()
    return report


def _recount_stats(txn: IndexTxn) -> None:
    counts: dict[str, list[int]] = {}
    for rid in list(txn.iter_record_ids()):
        record = txn.get_record(rid)
        entry = counts.setdefault(record.tenant, [0, 0])
        entry[0] += 1
        entry[1] += record.size
    for key, _ in list(txn.iter_docs(schema.DB_META)):
        if schema.stats_tenant(key) is not None:
            txn.delete_key(schema.DB_META, key)
    for tenant, (records, size) in counts.items():
        txn.put_doc(schema.DB_META, schema.stats_key(tenant), {"records": records, "bytes": size})

