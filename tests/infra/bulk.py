"""Many records written straight into the index, for tests and benchmarks that need an index of
tens of thousands to a million records without as many uploads.

Each record is a real one as the upload path writes it: its own data key, wrapped by the
vault's key provider in batches; its personal fields sealed under that key; its patient's
blind-index value under the tenant's key and scheme; every index entry written by
``IndexTxn.put_record``, the same call uploads use; the tenant's statistics bumped. Only the
blob is missing (``size`` 1, digest zeros): search never opens blobs.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from vault.ids import new_record_id
from vault.index import patient_ids
from vault.index.engine import IndexTxn
from vault.index.records import StoredRecord
from vault.metadata import format_timestamp, parse_metadata
from vault.service import Vault
from vault.services.reading import without_personal
from vault.store.format import derive_subkeys
from vault.store.personal import seal_personal

BATCH = 4096
BASE_TIME = 1_704_067_200  # 2024-01-01T00:00:00Z: record n is captured n minutes later


def record_metadata(number: int, **fields: Any) -> dict[str, Any]:
    """Metadata of record ``number``: one patient per 20 records, captured a minute apart, no
    consent beyond the defaults (so none for research)."""
    doc = {
        "patient_id": f"P-{number // 20:07d}",
        "captured_at": format_timestamp(datetime.fromtimestamp(BASE_TIME + number * 60, timezone.utc)),
        "modality": "clinical",
        "body_site": "upper_back",
        "description": "synthetic",
    }
    doc.update(fields)
    return doc


async def fill_records(
    vault: Vault, count: int, *, tenant: str, metadata_for: Callable[[int], dict[str, Any]] = record_metadata,
    progress: Callable[[int], None] | None = None,
) -> list[bytes]:
    """Write ``count`` records of ``tenant``; record ``n`` has ``metadata_for(n)``. Returns their
    ids in order."""
    index_key = await vault.context.tenant_keys.get(tenant)
    scheme = await vault.context.tenant_keys.scheme(tenant, vault.config)
    ids: list[bytes] = []
    for start in range(0, count, BATCH):
        numbers = range(start, min(start + BATCH, count))
        deks = [secrets.token_bytes(32) for _ in numbers]
        wrapped = await vault.keys.wrap_data_keys(deks)
        stamp = format_timestamp(datetime.fromtimestamp(time.time(), timezone.utc))
        batch: list[tuple[StoredRecord, str]] = []
        for number, dek, wrap in zip(numbers, deks, wrapped):
            metadata = parse_metadata(metadata_for(number))
            rid = new_record_id(BASE_TIME + number * 60)
            batch.append((StoredRecord(
                id=rid, tenant=tenant, metadata=without_personal(metadata),
                sealed=seal_personal(derive_subkeys(dek, rid).metadata, rid, metadata.personal()),
                patient_hmac=patient_ids.patient_hmac(index_key, scheme, metadata.patient_id),
                content_type="image/jpeg", size=1, sha256="0" * 64, created_at=stamp, updated_at=stamp,
                retain_until=None,
            ), wrap))
            ids.append(rid)

        def insert(txn: IndexTxn, batch: list[tuple[StoredRecord, str]] = batch) -> None:
            for record, wrap in batch:
                txn.put_dek(record.id, wrap)
                txn.put_record(record)
            txn.bump_stats(tenant, len(batch), len(batch))

        await vault.index.write(insert)
        if progress is not None:
            progress(len(ids))
    vault.metrics.records.set(vault.count_records())
    return ids
