"""The index integrity key: created with the index, unwrapped at open, upgraded into old indexes.

The key (32 random bytes) is stored in ``meta`` ``integrity`` wrapped by the KEK, the same way
as the tenants' blind-index keys, and it travels with them: key rotation rewraps it, retirement
waits for it, the key report counts it among the tenant keys, a backup's key floor includes it
(``integrity_key_versions``). Without the KEK it cannot be unwrapped, so a forged or altered
record or token cannot be sealed again (``vault.index.integrity``).

An index written before records were sealed (schema version 1) is upgraded once, at the first
open: a key is created, every record and token is sealed as it stands, and the schema version
becomes 2. That one moment trusts the index; it is audited (``index_upgrade``) so the trail and
its witnessed head show it, and a version-2 index whose key is missing is refused, never
silently re-keyed. docs/design.md ("Index integrity") discusses what remains.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from vault.errors import IndexTampered
from vault.index import schema
from vault.index.integrity import IndexSeal, record_body
from vault.index.engine import IndexEngine, IndexTxn
from vault.keys.base import KeyProvider, key_version_of
from vault.metadata import format_timestamp
from vault.services.context import ServiceContext

log = logging.getLogger(__name__)

UPGRADE_BATCH = 2000
Progress = Callable[[int, int], None]


def integrity_key_versions(txn: IndexTxn) -> list[int]:
    """The KEK version the index integrity key is wrapped under (empty before it exists)."""
    doc = txn.get_doc(schema.DB_META, schema.META_INTEGRITY)
    return [key_version_of(doc["key"])] if doc is not None else []


async def rewrap_integrity_key(index: IndexEngine, keys: KeyProvider, target: int) -> None:
    """Wrap the integrity key under ``target`` if it is older (key rotation's rewrap)."""
    doc = index.read(lambda t: t.get_doc(schema.DB_META, schema.META_INTEGRITY))
    if doc is None or key_version_of(doc["key"]) >= target:
        return
    (new,) = await keys.rewrap_data_keys([doc["key"]])
    if isinstance(new, Exception):
        log.error("index integrity key could not be rewrapped")
        return

    def store(txn: IndexTxn) -> None:
        current = txn.get_doc(schema.DB_META, schema.META_INTEGRITY)
        if current is not None and current["key"] == doc["key"]:
            txn.put_doc(schema.DB_META, schema.META_INTEGRITY, {**current, "key": new})

    await index.write(store)


async def open_seal(context: ServiceContext, *, progress: Progress | None = None) -> bool:
    """Unwrap (or create) the index integrity key and install it on the index; upgrade an index
    of schema version 1 first. Whether an upgrade ran (the caller audits it)."""
    index, keys, metrics = context.index, context.keys, context.metrics

    def state(txn: IndexTxn) -> tuple[dict[str, Any] | None, int, bool]:
        version = (txn.get_doc(schema.DB_META, schema.META_SCHEMA) or {}).get("version", schema.SCHEMA_VERSION)
        populated = bool(txn.count(schema.DB_RECORDS) or txn.count(schema.DB_TOKENS))
        return txn.get_doc(schema.DB_META, schema.META_INTEGRITY), int(version), populated

    doc, version, populated = index.read(state)
    if doc is None and version >= 2 and populated:
        # Deleting the key must not be a way to have tampered entries sealed afresh.
        metrics.index_integrity_errors.labels("key").inc()
        raise IndexTampered("key", schema.META_INTEGRITY)
    if doc is None:
        doc = await _create_key(index, keys, context.clock)
    seal = IndexSeal(await keys.unwrap_data_key(doc["key"]),
                     on_failure=lambda kind: metrics.index_integrity_errors.labels(kind).inc())
    upgraded = False
    if version < 2:
        await _upgrade(index, seal, progress)
        upgraded = True
    index.seal = seal
    return upgraded


async def _create_key(index: IndexEngine, keys: KeyProvider, clock: Callable[[], Any]) -> dict[str, Any]:
    candidate = {"key": await keys.wrap_data_key(secrets.token_bytes(32)), "created_at": format_timestamp(clock())}

    def put_if_absent(txn: IndexTxn) -> dict[str, Any]:
        existing = txn.get_doc(schema.DB_META, schema.META_INTEGRITY)
        if existing is not None:
            return existing
        txn.put_doc(schema.DB_META, schema.META_INTEGRITY, candidate)
        return candidate

    return await index.write(put_if_absent)


async def _upgrade(index: IndexEngine, seal: IndexSeal, progress: Progress | None) -> None:
    """Seal every record and token of a version-1 index, in batches (resumable: a value already
    sealed is checked, not sealed again), then record schema version 2."""
    total = index.read(lambda t: t.count(schema.DB_RECORDS) + t.count(schema.DB_TOKENS))
    log.info("sealing %d index entries (index schema 1 -> 2)", total)
    done = 0
    after = b""
    while True:
        def seal_batch(txn: IndexTxn, start: bytes = after) -> tuple[int, bytes | None]:
            batch: list[tuple[bytes, bytes]] = []
            for rid, raw in txn.scan_items(schema.DB_RECORDS, start):
                if rid != start:
                    batch.append((rid, raw))
                    if len(batch) >= UPGRADE_BATCH:
                        break
            for rid, raw in batch:  # written after the scan: no cursor walks values being replaced
                if raw[:1] == b"{":
                    txn.put_record_value(rid, seal.seal_record(rid, record_body(raw)))
                else:
                    seal.open_record(rid, raw)  # sealed by an interrupted upgrade: must verify
            return len(batch), batch[-1][0] if batch else None

        count, last = await index.write(seal_batch)
        done += count
        if progress is not None:
            progress(done, total)
        if last is None or count < UPGRADE_BATCH:
            break
        after = last

    def seal_tokens(txn: IndexTxn) -> int:
        count = 0
        for key, doc in list(txn.iter_docs(schema.DB_TOKENS)):
            if "mac" in doc:
                seal.check_token(key, doc)
            else:
                txn.put_doc(schema.DB_TOKENS, key, seal.seal_token(key, doc))
            count += 1
        txn.put_doc(schema.DB_META, schema.META_SCHEMA, {"version": schema.SCHEMA_VERSION})
        return count

    done += await index.write(seal_tokens)
    if progress is not None:
        progress(done, total)
    log.info("index sealed: %d entries, schema version %d", done, schema.SCHEMA_VERSION)
