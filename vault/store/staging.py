"""Staging of resumable uploads: how a partial upload is kept encrypted from its first byte.

Each upload has its own 32-byte *upload key*, random, stored only wrapped by the KEK (in the
index's ``deks`` database under the upload id, like a record's data key). Two things are sealed
under it, each under its own HKDF subkey (``format.derive_subkeys``, salt = the id it belongs to):

- every *segment*, the bytes one PATCH appended, is a blob of format v1 (``format``/``sealer``)
  under ``derive_subkeys(upload key, segment id).blob``, the segment id (a fresh record-style
  id) in its header; the blob store keeps it under that id like any blob. A segment moved to
  another upload, or to another position of its own, opens under the wrong subkey and fails;
  the order and sizes of the segments are in the upload's sealed state in the index.
- the record metadata the upload will be created with (it names the patient):
  ``nonce(12) || AES-256-GCM(derive_subkeys(upload key, upload id).metadata, nonce, JSON, aad)``
  with ``aad = "imagevault/v1/upload-metadata" || upload id``.

Deleting the wrapped upload key (done in the same transaction that commits the finished record)
makes every staged byte unreadable at once, whatever copies of the segments remain.
docs/format.md, "Resumable uploads", gives the bytes.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.errors import BlobCorrupt
from vault.store.format import derive_subkeys

UPLOAD_METADATA_AAD = b"imagevault/v1/upload-metadata"
NONCE_LEN = 12


def segment_key(upload_key: bytes, segment_id: bytes) -> bytes:
    """The blob subkey of one segment (a v1 blob whose header names ``segment_id``)."""
    return derive_subkeys(upload_key, segment_id).blob


def seal_upload_metadata(upload_key: bytes, upload_id: bytes, document: bytes) -> bytes:
    """Encrypt and authenticate the metadata JSON an upload will be created with. The nonce is
    random: the key seals one document per upload, but a random nonce costs nothing here."""
    nonce = os.urandom(NONCE_LEN)
    key = derive_subkeys(upload_key, upload_id).metadata
    return nonce + AESGCM(key).encrypt(nonce, document, UPLOAD_METADATA_AAD + upload_id)


def open_upload_metadata(upload_key: bytes, upload_id: bytes, sealed: bytes) -> bytes:
    """The JSON sealed by ``seal_upload_metadata``; ``BlobCorrupt`` for any failure."""
    key = derive_subkeys(upload_key, upload_id).metadata
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], UPLOAD_METADATA_AAD + upload_id)
    except (InvalidTag, ValueError) as exc:
        raise BlobCorrupt("upload metadata failed its integrity check") from exc
