"""Start-up recovery and scrubbing: the checks that make "loses no data" shown, not claimed.

Recovery runs once when the daemon starts, before it accepts requests (so no upload is in
flight): it removes temporary blobs of interrupted writes, moves blobs that no record points at
(uploads that crashed between the blob commit and the index commit: never acknowledged) and
blobs whose length cannot be that of their record (truncated or padded) into
``<data_dir>/quarantine/``, and reports records whose blob is missing. Nothing is silently
deleted but temporary files: an operator can inspect the quarantine.

Scrubbing (``imagevault verify``) decrypts every blob, or a random sample, authenticating each
chunk and comparing the SHA-256 of the plaintext with the record, and reports bit-rot by record
id (ids carry no personal data).
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vault.errors import BlobCorrupt, KeyMaterialError, NotFound
from vault.ids import encode_id
from vault.index.lmdb import IndexTxn
from vault.store.format import DEFAULT_CHUNK_EXP, HEADER_LEN, BlobHeader, derive_subkeys, sealed_size
from vault.store.sealer import open_range

if TYPE_CHECKING:
    from vault.service import Vault

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


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

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.unreadable_keys)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok, "checked": self.checked, "corrupt": self.corrupt,
            "missing": self.missing, "unreadable_keys": self.unreadable_keys,
        }


def _record_sizes(txn: IndexTxn) -> dict[str, int]:
    return {
        encode_id(rid): record.size
        for rid, record in ((rid, txn.get_record(rid)) for rid in txn.iter_record_ids())
        if record is not None
    }


async def _quarantine(vault: Vault, blob_id: str) -> None:
    """Move a blob out of the store into the data directory's quarantine, then delete it."""
    target = Path(vault.config.data_dir) / "quarantine"
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(target / f"{blob_id}.ivb", "wb") as handle:
        async for piece in vault.backend.read_all(blob_id):
            handle.write(piece)
    await vault.backend.delete(blob_id)


async def _sized_as_sealed(vault: Vault, blob_id: str, size: int, plaintext: int) -> bool:
    """Whether a blob of ``size`` bytes can hold ``plaintext`` bytes sealed. Records do not store
    their blob's chunk size: the default is tried first (no I/O); only a blob that does not fit
    it has its header read, so one sealed with another valid chunk size (an older default, another
    writer) is not mistaken for a damaged one. Unauthenticated, like every size check here: the
    chunks' tags decide integrity when the blob is read."""
    if size == sealed_size(plaintext, DEFAULT_CHUNK_EXP):
        return True
    try:
        header = BlobHeader.decode(await vault.backend.read(blob_id, 0, HEADER_LEN))
    except (BlobCorrupt, ValueError):
        return False
    return header.chunk_exp != DEFAULT_CHUNK_EXP and size == sealed_size(plaintext, header.chunk_exp)


async def recover(vault: Vault) -> RecoveryReport:
    temporary = await vault.backend.cleanup_temporary()
    sizes = vault.index.read(_record_sizes)
    seen: set[str] = set()
    orphans = 0
    damaged: list[str] = []
    async for blob_id, size in vault.backend.list_blobs():
        seen.add(blob_id)
        expected = sizes.get(blob_id)
        if expected is None:
            await _quarantine(vault, blob_id)
            orphans += 1
        elif not await _sized_as_sealed(vault, blob_id, size, expected):
            await _quarantine(vault, blob_id)
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


async def scrub(vault: Vault, *, sample: int | None = None, progress: Progress | None = None) -> ScrubReport:
    """Decrypt and authenticate every blob (or ``sample`` random ones); never yields plaintext."""
    ids = vault.index.read(lambda t: list(t.iter_record_ids()))
    if sample is not None and sample < len(ids):
        ids = random.sample(ids, sample)
    report = ScrubReport()
    total = len(ids)
    for start in range(0, total, 256):
        batch = ids[start:start + 256]
        deks = await vault._data_keys(batch, cache=False)
        for rid in batch:
            rid_text = encode_id(rid)
            record = vault.index.read(lambda t, rid=rid: t.get_record(rid))
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
                    vault.backend, rid_text, derive_subkeys(dek, rid).blob, rid, 0, record.size,
                    expected_size=record.size,
                ):
                    digest.update(piece)
                if digest.hexdigest() != record.sha256:
                    raise BlobCorrupt()
            except NotFound:
                report.missing.append(rid_text)
            except BlobCorrupt:
                report.corrupt.append(rid_text)
            except KeyMaterialError:
                report.unreadable_keys.append(rid_text)
            if progress is not None:
                progress(report.checked, total)
    vault.metrics.scrub_corrupt.set(len(report.corrupt) + len(report.missing))
    if not report.ok:
        log.error(
            "scrub found %d corrupt, %d missing blob(s), %d unreadable key(s): %s",
            len(report.corrupt), len(report.missing), len(report.unreadable_keys),
            ", ".join((report.corrupt + report.missing + report.unreadable_keys)[:50]),
        )
    return report

