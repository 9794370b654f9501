"""The state of one resumable (tus) upload, as the index's ``uploads`` database holds it.

Key: the upload id (16 random bytes). Value: the state's JSON, sealed under the index integrity
key (``IndexSeal.seal_upload``): the state decides who may append to an upload and which staged
segments make up its bytes, so a forged or edited state must never be acted on. docs/format.md,
"Resumable uploads", gives the bytes.

The upload's own key (32 random bytes, wrapped by the KEK) is not here: it is stored like a data
key, in ``deks`` under the upload id, so KEK rotation, rewrap, retirement and the shred epoch
treat it as they treat every other data key, and deleting it makes every staged byte unreadable.

No personal data in the clear: the metadata (which names the patient) is ``metadata_sealed``,
AES-GCM under a subkey of the upload key (``vault.store.staging``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, replace
from typing import Any

from vault import codec
from vault.ids import encode_id


@dataclass(frozen=True)
class Segment:
    """One staged piece of the upload: a sealed object in the blob store and its plaintext size."""

    blob_id: str  # 26-character id, as the blob store names objects
    size: int


@dataclass(frozen=True)
class UploadState:
    id: bytes
    tenant: str
    owner: str  # the principal's name (a token's name or a JWT subject)
    on_behalf_of: str | None  # the user an application token named, part of the owner
    length: int  # Upload-Length
    offset: int  # bytes received and staged
    content_type: str
    metadata_sealed: bytes
    created_at: str
    expires_at: str
    segments: tuple[Segment, ...] = field(default_factory=tuple)
    record_id: str | None = None  # set, in the record's own commit, once the upload completed

    @property
    def completed(self) -> bool:
        return self.record_id is not None

    @property
    def id_text(self) -> str:
        return encode_id(self.id)

    def with_changes(self, **changes: Any) -> UploadState:
        return replace(self, **changes)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "tenant": self.tenant, "owner": self.owner, "on_behalf_of": self.on_behalf_of,
            "length": self.length, "offset": self.offset, "content_type": self.content_type,
            "metadata": base64.b64encode(self.metadata_sealed).decode(),
            "created_at": self.created_at, "expires_at": self.expires_at,
            "segments": [[s.blob_id, s.size] for s in self.segments],
            "record_id": self.record_id,
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, upload_id: bytes, body: bytes) -> UploadState:
        doc = codec.loads(body)
        return cls(
            id=upload_id, tenant=doc["tenant"], owner=doc["owner"], on_behalf_of=doc.get("on_behalf_of"),
            length=int(doc["length"]), offset=int(doc["offset"]), content_type=doc["content_type"],
            metadata_sealed=base64.b64decode(doc["metadata"]), created_at=doc["created_at"],
            expires_at=doc["expires_at"], segments=tuple(Segment(b, int(n)) for b, n in doc["segments"]),
            record_id=doc.get("record_id"),
        )

