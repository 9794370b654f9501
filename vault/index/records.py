"""The stored form of a record in the ``records`` database, and the index entries it implies.

A ``StoredRecord`` holds the non-identifying metadata in the clear (for search), the personal
fields only as ``sealed`` (AES-256-GCM under the record's metadata subkey, opened by the
service), and the patient's blind index value. Serialised as compact JSON (docs/format.md).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

from vault import codec
from vault.index import schema
from vault.metadata import Consent, Metadata, Retention, parse_timestamp


@dataclass(frozen=True)
class StoredRecord:
    id: bytes
    tenant: str
    metadata: Metadata  # personal fields blanked ("" / None); the real ones are in ``sealed``
    sealed: bytes
    patient_hmac: bytes
    content_type: str
    size: int
    sha256: str
    created_at: str
    updated_at: str
    retain_until: str | None
    received_sha256: str | None = None

    @property
    def captured_key(self) -> bytes:
        return schema.encode_time(self.metadata.captured_at_dt)

    def index_entries(self) -> list[tuple[bytes, bytes]]:
        """Every (database, key) pair that points at this record."""
        tail = self.captured_key + self.id
        meta = self.metadata
        tenant = self.tenant
        entries = [
            (schema.DB_BY_PATIENT, schema.patient_prefix(tenant, self.patient_hmac) + tail),
            (schema.DB_BY_FACET, schema.facet_prefix(tenant, schema.FACET_ALL) + tail),
            (schema.DB_BY_FACET, schema.facet_prefix(tenant, schema.FACET_MODALITY, meta.modality) + tail),
            (schema.DB_BY_FACET, schema.facet_prefix(tenant, schema.FACET_BODY_SITE, meta.body_site) + tail),
        ]
        if meta.lesion_id:
            entries.append((schema.DB_BY_FACET, schema.facet_prefix(tenant, schema.FACET_LESION, meta.lesion_id) + tail))
        if meta.session_id:
            entries.append((schema.DB_BY_FACET, schema.facet_prefix(tenant, schema.FACET_SESSION, meta.session_id) + tail))
        for tag in meta.tags:
            entries.append((schema.DB_BY_FACET, schema.facet_prefix(tenant, schema.FACET_TAG, tag) + tail))
        for purpose in ("care", "teaching", "publication", "research"):
            if meta.consent.allows(purpose):
                entries.append((schema.DB_BY_FACET, schema.facet_prefix(tenant, schema.FACET_CONSENT, purpose) + tail))
        if self.retain_until is not None:
            entries.append((schema.DB_BY_EXPIRY, schema.expiry_key(parse_timestamp(self.retain_until, "retain_until"), self.id)))
        return entries

    def to_bytes(self) -> bytes:
        meta = self.metadata.to_json(include_personal=False)
        meta.pop("sha256", None)
        doc: dict[str, Any] = {
            "v": 1,
            "tenant": self.tenant,
            "meta": meta,
            "client_sha256": self.metadata.sha256,
            "sealed": base64.b64encode(self.sealed).decode(),
            "ph": self.patient_hmac.hex(),
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "retain_until": self.retain_until,
        }
        if self.received_sha256 is not None:
            doc["received_sha256"] = self.received_sha256
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, record_id: bytes, raw: bytes) -> StoredRecord:
        doc = codec.loads(raw)
        meta = doc["meta"]
        consent = _consent(meta.get("consent") or {})
        retention_doc = meta.get("retention") or {"class": "medical"}
        metadata = Metadata(
            patient_id="",
            captured_at=meta["captured_at"],
            modality=meta["modality"],
            body_site=meta["body_site"],
            body_site_code=meta.get("body_site_code"),
            lesion_id=meta.get("lesion_id"),
            session_id=meta.get("session_id"),
            device=meta.get("device"),
            tags=tuple(meta.get("tags") or ()),
            consent=consent,
            retention=_retention(retention_doc["class"], retention_doc.get("until")),
            legal_hold=bool(meta.get("legal_hold")),
            sha256=doc.get("client_sha256"),
        )
        return cls(
            id=record_id,
            tenant=doc["tenant"],
            metadata=metadata,
            sealed=base64.b64decode(doc["sealed"]),
            patient_hmac=bytes.fromhex(doc["ph"]),
            content_type=doc["content_type"],
            size=doc["size"],
            sha256=doc["sha256"],
            created_at=doc["created_at"],
            updated_at=doc["updated_at"],
            retain_until=doc.get("retain_until"),
            received_sha256=doc.get("received_sha256"),
        )

    @staticmethod
    def with_patient_hmac_bytes(raw: bytes, old: bytes, new: bytes) -> bytes | None:
        """The encoded record ``raw`` with its patient HMAC ``old`` replaced by ``new``, without
        decoding it (a shred epoch re-keys every record); None if ``raw`` does not carry ``old``.
        Exact: ``"ph":"<64 hex digits>"`` occurs once in the compact JSON of ``to_bytes``."""
        needle = b'"ph":"' + old.hex().encode() + b'"'
        if needle not in raw:
            return None
        return raw.replace(needle, b'"ph":"' + new.hex().encode() + b'"', 1)

    def retain_until_dt(self) -> datetime | None:
        return None if self.retain_until is None else parse_timestamp(self.retain_until, "retain_until")

    def with_changes(self, **changes: Any) -> StoredRecord:
        return replace(self, **changes)


# A search decodes every record it returns, and building a frozen dataclass costs microseconds;
# records share a handful of consent and retention values, so decoding shares immutable
# instances (equal to freshly built ones) instead of building one per record.
@lru_cache(maxsize=512)
def _shared_consent(fields: tuple[tuple[str, Any], ...]) -> Consent:
    return Consent(**dict(fields))


def _consent(doc: dict[str, Any]) -> Consent:
    try:
        return _shared_consent(tuple(doc.items()))
    except TypeError:  # an unhashable value: build it (and fail) as before
        return Consent(**doc)


@lru_cache(maxsize=512)
def _shared_retention(cls: str, until: str | None) -> Retention:
    return Retention(cls, until)


def _retention(cls: str, until: str | None) -> Retention:
    try:
        return _shared_retention(cls, until)
    except TypeError:
        return Retention(cls, until)
