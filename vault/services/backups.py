"""Online backup and restore that keep erasures erased.

A backup directory holds two kinds of artefact, kept apart on purpose:

``blobs/``
    The bulk: sealed blobs, copied incrementally. Blobs are immutable, so one already in the
    backup is never copied again; ``blobs/catalog.json`` holds each one's size and SHA-256.
``snapshots/<UTC time>/``
    A compacted LMDB copy of the index (records, wrapped DEKs, blind indexes, tokens) and of
    the audit trail, and ``manifest.json`` with checksums, the shred epoch it was taken in and
    the lowest KEK version any of its keys is wrapped under (its *key floor*).

A backup holds **no key material**. A stolen backup is ciphertext and wrapped keys only; the
KEK stays in Vault (Transit) or, for the local keyring, in a key escrow that
``imagevault keys escrow`` writes apart, under a passphrase, with only the current KEK
versions. A backup of a local-keyring archive refuses to run while the newest escrow predates
the last shred epoch, so a restorable pair (snapshot, escrow) always exists.

Each run propagates erasure into the backup: snapshots from before the last shred epoch (their
keys are destroyed: they can never be restored) and all but the newest ``keep`` are removed,
then every blob no remaining snapshot references. So after an erasure, the next epoch and the
next backup, the backup holds nothing of the erased records.

A restore takes one snapshot (normally the newest) into an empty data directory. It refuses a
snapshot whose key floor is below the KMS's (or the escrow's) lowest live version: that
snapshot predates a shred epoch. It brings back only the blobs the restored index references,
takes the audit trail from the newest snapshot (so a restore never shortens the chain, and the
facade appends an entry saying what was restored), and applies token revocations recorded in
newer snapshots, so a token revoked after the restored snapshot stays revoked.

The LMDB copy runs inside one read transaction, so the index snapshot is consistent while the
daemon keeps serving; blobs of records shredded between the snapshot and the copy are reported
as ``shredded_during_backup``. Files in a backup are mode 0600, directories 0700.
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

from vault import components
from vault.config import Config
from vault.errors import Conflict, ImageVaultError, InvalidRequest, KeyMaterialError, NotFound
from vault.files import fsync_dir, write_atomic
from vault.ids import encode_id
from vault.index import schema
from vault.index.engine import IndexTxn
from vault.index.lmdb import Index
from vault.index.rendition_jobs import QUEUED, READY, RenditionState, get_state, put_state
from vault.keys.base import key_version_of
from vault.services.context import ServiceContext, open_context
from vault.services.integrity import integrity_key_versions, open_seal
from vault.store.backends.base import blob_names, record_of_blob

Progress = Callable[[int, int], None]
MANIFEST_VERSION = 2
DEFAULT_KEEP = 7  # snapshots kept by a backup run (the newest ones)


@dataclass
class BackupReport:
    snapshot: str
    records: int = 0
    blobs_copied: int = 0
    blobs_already_present: int = 0
    bytes_copied: int = 0
    shredded_during_backup: list[str] = field(default_factory=list)
    epoch: int = 0
    snapshots_removed: list[str] = field(default_factory=list)
    blobs_removed: int = 0

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class RestoreReport:
    snapshot: str
    audit_from: str  # the snapshot whose audit trail was restored (the newest)
    records: int = 0
    revocations_applied: int = 0
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
    return root / "blobs" / record_of_blob(blob_id)[-2:].lower() / f"{blob_id}.ivb"


def snapshots(dest: Path) -> list[str]:
    base = dest / "snapshots"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "manifest.json").is_file())


class Backups:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def backup(self, dest: Path, *, keep: int = DEFAULT_KEEP, progress: Progress | None = None) -> BackupReport:
        if keep < 1:
            raise InvalidRequest("keep must be at least 1")
        if self._context.index.engine != "lmdb":
            # The snapshot is LMDB's consistent file copy; a PostgreSQL index is backed up with
            # PostgreSQL's own tools (pg_dump, base backups), or copied to LMDB first.
            raise InvalidRequest("backup snapshots an LMDB index; back up a PostgreSQL index with pg_dump "
                                 "or `imagevault index copy --to lmdb`")
        return await _backup(self._context, dest, keep=keep, progress=progress)

    @staticmethod
    async def restore(
        config: Config, src: Path, *, snapshot: str | None = None, escrow: bytes | None = None,
        escrow_passphrase: str | None = None, progress: Progress | None = None,
    ) -> RestoreReport:
        return await _restore(config, src, snapshot=snapshot, escrow=escrow, escrow_passphrase=escrow_passphrase,
                              progress=progress)


def _key_floor(txn: IndexTxn) -> int:
    """The lowest KEK version any key in the index is wrapped under (0: no key at all)."""
    versions = [key_version_of(w) for _, w in txn.iter_deks()] + integrity_key_versions(txn)
    for _, doc in txn.iter_docs(schema.DB_TENANTS):
        versions += [key_version_of(doc[k]) for k in ("index_key", "next_index_key") if doc.get(k)]
    return min(versions, default=0)


async def _backup(context: ServiceContext, dest: Path, *, keep: int, progress: Progress | None) -> BackupReport:
    def state(txn: IndexTxn) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
        last = txn.get_doc(schema.DB_META, schema.META_EPOCH)
        return (last["number"] if last else 0, txn.get_doc(schema.DB_META, schema.META_ESCROW),
                txn.get_doc(schema.DB_JOBS, schema.JOB_EPOCH))

    epoch, escrow, job = context.index.read(state)
    kek_version = (await context.keys.status()).current_version
    if job is not None and job.get("state") == "running":
        raise Conflict("a shred epoch is running; back up when it has finished (its keys are about to change)")
    if context.keys.name == "local" and (escrow is None or escrow["epoch"] < epoch):
        raise Conflict("the local keyring has no key escrow made since the last shred epoch: "
                       "run `imagevault keys escrow FILE` first (backups hold no key material)")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    snap = dest / "snapshots" / stamp
    work = dest / "snapshots" / f".{stamp}.partial"
    work.mkdir(parents=True, mode=0o700)
    report = BackupReport(stamp, epoch=epoch)

    # 1. The index, consistent as of one read transaction, compacted; then the audit trail
    #    (copied after the index, so it covers at least every operation the index shows).
    await asyncio.to_thread(context.index.copy_to, work / "index", compact=True)
    await asyncio.to_thread(context.audit.copy_to, work / "audit")
    files: dict[str, str] = {}
    for path in sorted(work.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(work))] = _sha256_file(path)

    # 2. The blobs the snapshot references, incrementally.
    snapshot_index = Index(work / "index", map_size=context.config.lmdb_map_size, readonly=True)
    try:
        sizes = snapshot_index.read(lambda t: [(rid, t.get_record(rid)) for rid in t.iter_record_ids()])
        # Renditions are copied with their record when its job is ready in the snapshot: a
        # restore then needs no decoder run to serve them.
        rendered = snapshot_index.read(lambda t: {rid for rid, _ in sizes
                                                  if (s := get_state(t, rid)) is not None and s.state == READY})
        key_floor = snapshot_index.read(_key_floor)
    finally:
        snapshot_index.close()
    catalog_path = dest / "blobs" / "catalog.json"
    (dest / "blobs").mkdir(exist_ok=True, mode=0o700)
    catalog: dict[str, dict[str, Any]] = json.loads(catalog_path.read_text()) if catalog_path.exists() else {}
    report.records = len(sizes)
    for done, (rid, record) in enumerate(sizes, 1):
        blob_id = encode_id(rid)
        names = blob_names(blob_id) if rid in rendered else [blob_id]
        for name in names:
            target = _blob_path(dest, name)
            if name in catalog and target.exists():
                if name == blob_id:
                    report.blobs_already_present += 1
                continue
            try:
                digest, size = await _copy_blob(context, name, target)
            except NotFound:
                if name == blob_id:
                    report.shredded_during_backup.append(blob_id)
                    break
                continue  # a rendition being made again: the restore queues it
            catalog[name] = {"size": size, "sha256": digest}
            if name == blob_id:
                report.blobs_copied += 1
            report.bytes_copied += size
            if len(catalog) % 256 == 0:
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
        "blobs": {name: catalog[name] for rid, _ in sizes for name in blob_names(encode_id(rid)) if name in catalog},
        "shredded_during_backup": report.shredded_during_backup,
        "epoch": epoch,
        "key_floor": key_floor,
        "kek_version": kek_version,
    }
    _write_json_atomic(work / "manifest.json", manifest)
    os.replace(work, snap)
    fsync_dir(snap.parent)
    record = {"snapshot": stamp, "epoch": epoch, "created_at": stamp}
    await context.index.write(lambda t: t.put_doc(schema.DB_META, schema.META_BACKUP, record))

    # 3. Propagate erasure: drop unrestorable and surplus snapshots, then unreferenced blobs.
    report.snapshots_removed, report.blobs_removed = await asyncio.to_thread(_prune, dest, epoch, keep, stamp)
    await asyncio.to_thread(_restrict_modes, dest)
    return report


def _manifest(dest: Path, name: str) -> dict[str, Any]:
    return json.loads((dest / "snapshots" / name / "manifest.json").read_text())


def _prune(dest: Path, epoch: int, keep: int, newest: str) -> tuple[list[str], int]:
    names = snapshots(dest)
    kept = [n for n in names if n == newest or _manifest(dest, n).get("epoch", 0) >= epoch][-keep:]
    if newest not in kept:
        kept.append(newest)
    removed = [n for n in names if n not in kept]
    for name in removed:
        shutil.rmtree(dest / "snapshots" / name)
    if removed:
        fsync_dir(dest / "snapshots")
    referenced: set[str] = set()
    for name in kept:
        referenced.update(_manifest(dest, name)["blobs"])
    catalog_path = dest / "blobs" / "catalog.json"
    catalog: dict[str, Any] = json.loads(catalog_path.read_text()) if catalog_path.exists() else {}
    gone = [blob_id for blob_id in catalog if blob_id not in referenced]
    for blob_id in gone:
        _blob_path(dest, blob_id).unlink(missing_ok=True)
        del catalog[blob_id]
    if gone:
        _write_json_atomic(catalog_path, catalog)
    return removed, len(gone)


def _restrict_modes(dest: Path) -> None:
    os.chmod(dest, 0o700)
    for root, dirs, files in os.walk(dest):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o700)
        for name in files:
            os.chmod(os.path.join(root, name), 0o600)


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
    config: Config, src: Path, *, snapshot: str | None, escrow: bytes | None, escrow_passphrase: str | None,
    progress: Progress | None,
) -> RestoreReport:
    """Restore into an empty data directory; see the module docstring for what is kept."""
    available = snapshots(src)
    if not available:
        raise InvalidRequest(f"no snapshot found under {src}")
    snapshot = snapshot or available[-1]
    if snapshot not in available:
        raise InvalidRequest(f"snapshot {snapshot} not found under {src}")
    if config.data_dir.exists() and any(config.data_dir.iterdir()):
        raise InvalidRequest(f"data directory {config.data_dir} is not empty; restore needs an empty one")
    if config.kms == "local" and escrow is None:
        raise InvalidRequest("backups hold no key material: restoring a local-keyring archive needs its key escrow "
                             "(imagevault restore SRC --escrow FILE)")
    chosen = src / "snapshots" / snapshot
    newest = src / "snapshots" / available[-1]
    manifest = _manifest(src, snapshot)
    _verify_files(chosen, manifest, "index/")
    _verify_files(chosen, manifest, "audit/")
    _verify_files(newest, _manifest(src, available[-1]), "audit/")

    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config.data_dir, 0o700)
    try:
        if config.kms == "local":
            from vault.keys.keyring import LocalKeyring

            LocalKeyring.import_escrow(config.keys_dir, escrow or b"", escrow_passphrase or "",
                                       keyring_passphrase=config.keyring_passphrase)
        keys = await components.open_key_provider(config)
        try:
            status = await keys.status()
        finally:
            await keys.close()
        floor = status.min_decryption_version
        if manifest.get("kek_version", 0) > status.current_version:
            raise ImageVaultError(
                f"the key material ends at version {status.current_version} but snapshot {snapshot} was taken at "
                f"version {manifest['kek_version']}: use a key escrow made after that snapshot's shred epoch"
            )
        if manifest.get("key_floor", 0) and manifest["key_floor"] < floor:
            raise ImageVaultError(
                f"snapshot {snapshot} predates the shred epoch that destroyed every key version below {floor}: "
                "its keys are gone for good; restore a snapshot taken after that epoch"
            )
        shutil.copytree(chosen / "index", config.index_dir)
        audit_source = newest if (newest / "audit").is_dir() else chosen
        if (audit_source / "audit").is_dir():
            shutil.copytree(audit_source / "audit", config.audit_dir)
        report = RestoreReport(snapshot, audit_source.name)
        revoked = _later_revocations(config, src, available, snapshot)
        return await _restore_records(config, src, report, revoked, progress)
    except BaseException:
        # The directory was empty before: leave it empty rather than half restored.
        for child in list(config.data_dir.iterdir()):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def _later_revocations(config: Config, src: Path, available: list[str], snapshot: str) -> dict[bytes, str]:
    """Every token that a snapshot newer than the restored one shows revoked (key -> time)."""
    revoked: dict[bytes, str] = {}
    for name in available[available.index(snapshot) + 1:]:
        later = Index(src / "snapshots" / name / "index", map_size=config.lmdb_map_size, readonly=True)
        try:
            for key, doc in later.read(lambda t: list(t.iter_docs(schema.DB_TOKENS))):
                if doc.get("revoked_at"):
                    revoked.setdefault(key, doc["revoked_at"])
        finally:
            later.close()
    return revoked


def _drop_uploads(txn: IndexTxn) -> int:
    """Resumable uploads do not survive a restore: their staged segments are not in the backup
    (it copies the blobs of records). Their states, keys and counts go; clients start again."""
    upload_ids = list(txn.iter_upload_ids())
    for upload_id in upload_ids:
        txn.delete_upload(upload_id)
        txn.delete_key(schema.DB_DEKS, upload_id)
    for key, _ in list(txn.iter_docs(schema.DB_META)):
        if key.startswith(schema.UPLOAD_STATS_PREFIX):
            txn.delete_key(schema.DB_META, key)
    return len(upload_ids)


def _drop_console_sessions(txn: IndexTxn) -> int:
    """Console sessions do not survive a restore: a session signed out since the snapshot must
    not come back. Everyone signs in again."""
    keys = list(txn.scan_keys(schema.DB_CONSOLE_SESSIONS, b"", b"\xff" * 33))
    for key in keys:
        txn.delete_key(schema.DB_CONSOLE_SESSIONS, key)
    return len(keys)


def _apply_revocations(txn: IndexTxn, revoked: dict[bytes, str]) -> int:
    """Revoke them in the restored index (sealed again: a revocation is a security field)."""
    count = 0
    for key, stamp in revoked.items():
        doc = txn.get_doc(schema.DB_TOKENS, key)
        if doc is not None and not doc.get("revoked_at"):
            txn.put_doc(schema.DB_TOKENS, key, txn.seal.seal_token(key, {**txn.seal.check_token(key, doc), "revoked_at": stamp}))
            count += 1
    return count


async def _restore_records(
    config: Config, src: Path, report: RestoreReport, revoked: dict[bytes, str], progress: Progress | None,
) -> RestoreReport:
    snapshot = report.snapshot
    context = await open_context(config)
    try:
        await open_seal(context)  # a snapshot of an older index is upgraded here, once
        report.revocations_applied = await context.index.write(lambda t: _apply_revocations(t, revoked))
        await context.index.write(_drop_uploads)
        await context.index.write(_drop_console_sessions)
        entries = context.index.read(lambda t: list(t.iter_deks()))
        results = await context.keys.unwrap_data_keys([w for _, w in entries])
        dead = [rid for (rid, _), result in zip(entries, results) if isinstance(result, KeyMaterialError)]
        if entries and len(dead) == len(entries):
            raise ImageVaultError(
                f"no wrapped key of snapshot {snapshot} opens with the current key material: "
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
        requeue: list[bytes] = []
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
            if not await _restore_renditions(context, src, catalog, rid):
                requeue.append(rid)
            if progress is not None:
                progress(done, len(live))
        if requeue:
            # Ready in the snapshot but not in the backup (or damaged there): made again.
            await context.index.write(lambda t: [put_state(t, rid, RenditionState(QUEUED)) for rid in requeue
                                                 if (s := get_state(t, rid)) is not None and s.state == READY])
        # Per-tenant statistics follow the restored records, not the snapshot's counters.
        await context.index.write(_recount_stats)
    finally:
        await context.close()
    return report


async def _restore_renditions(context: ServiceContext, src: Path, catalog: dict[str, Any], rid: bytes) -> bool:
    """Copy a record's renditions back from the backup; False if one it should have is not there."""
    ready = context.index.read(lambda t: get_state(t, rid))
    if ready is None or ready.state != READY:
        return True
    for name in blob_names(encode_id(rid))[1:]:
        source = _blob_path(src, name)
        expected = catalog.get(name)
        if expected is None or not source.exists() or _sha256_file(source) != expected["sha256"]:
            return False
        writer = await context.backend.open_writer(name)
        try:
            await writer.write(source.read_bytes())
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise
    return True


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

