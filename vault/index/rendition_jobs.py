"""One record's rendition job as the index keeps it: ``jobs`` ``rendition/<ID>`` (docs/format.md).

The value is JSON: ``{"state": "queued"|"ready"|"failed"|"unavailable", "reason": code,
"attempts": n, "thumbnail": {"etag": hex, "size": n}, "preview": {...}}`` (``reason`` unless
ready, ``attempts`` once tried, the renditions once ready). ``vault.services.renditions`` runs
the jobs; readers (a search's results) only look at their state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vault import codec
from vault.index import schema
from vault.index.engine import IndexTxn

QUEUED, READY, FAILED, UNAVAILABLE = "queued", "ready", "failed", "unavailable"
STATES = (QUEUED, READY, FAILED, UNAVAILABLE)
KINDS = ("thumbnail", "preview")


@dataclass(frozen=True)
class RenditionInfo:
    etag: str  # hex of the first 16 bytes of SHA-256 over the rendition's bytes
    size: int  # of the rendition's bytes (WebP), before sealing


@dataclass(frozen=True)
class RenditionState:
    """One record's rendition job and its outcome."""

    state: str
    reason: str | None = None
    attempts: int = 0
    thumbnail: RenditionInfo | None = None
    preview: RenditionInfo | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"state": self.state}
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.attempts:
            doc["attempts"] = self.attempts
        for kind in KINDS:
            info = self.info(kind)
            if info is not None:
                doc[kind] = {"etag": info.etag, "size": info.size}
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RenditionState:
        infos = {kind: RenditionInfo(str(doc[kind]["etag"]), int(doc[kind]["size"]))
                 for kind in KINDS if isinstance(doc.get(kind), dict)}
        state = doc.get("state")
        return cls(state if state in STATES else FAILED, doc.get("reason"), int(doc.get("attempts", 0)),
                   infos.get("thumbnail"), infos.get("preview"))

    def info(self, kind: str) -> RenditionInfo | None:
        return self.thumbnail if kind == "thumbnail" else self.preview


def put_state(txn: IndexTxn, record_id: bytes, state: RenditionState) -> None:
    txn.put_doc(schema.DB_JOBS, schema.rendition_job_key(record_id), state.to_json())


def get_state(txn: IndexTxn, record_id: bytes) -> RenditionState | None:
    doc = txn.get_doc(schema.DB_JOBS, schema.rendition_job_key(record_id))
    return None if doc is None else RenditionState.from_json(doc)


# Where a record's state is, as an attachment of a search walk (``IndexTxn.prefix_cursor``).
STATE_ATTACH = (schema.DB_JOBS, schema.RENDITION_JOB_PREFIX)


def state_keys(record_ids: list[bytes]) -> list[tuple[bytes, bytes]]:
    """What ``get_states`` reads (``IndexTxn.prefetch``)."""
    return [(schema.DB_JOBS, schema.rendition_job_key(rid)) for rid in record_ids]


def get_states(txn: IndexTxn, record_ids: list[bytes]) -> list[RenditionState | None]:
    """``get_state`` of several records, read together (``IndexTxn.get_many``)."""
    raws = txn.get_many(schema.DB_JOBS, [schema.rendition_job_key(rid) for rid in record_ids])
    return [None if raw is None else RenditionState.from_json(codec.loads(raw)) for raw in raws]
