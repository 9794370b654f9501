"""Sealing of a record's personal fields (patient id, description, diagnosis) for the index.

The layout is ``nonce (12 random bytes) || AES-256-GCM(metadata subkey, nonce, JSON, aad)`` with
``aad = "imagevault/v1/record-metadata" || record id`` (docs/format.md, "Index keys"). The
metadata subkey is derived from the record's DEK (``format.derive_subkeys``), so shredding the
DEK makes every copy of these fields unreadable, stale LMDB pages included.

The nonce is random, not derived: the same subkey seals every revision of a record (a PATCH
re-seals), so a deterministic nonce would repeat under one key. 2^32 revisions of one record
keep the collision probability negligible. The record id in the AAD stops a sealed blob from
being moved onto another record.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault import codec
from vault.errors import BlobCorrupt

PERSONAL_AAD = b"imagevault/v1/record-metadata"
NONCE_LEN = 12


def seal_personal(metadata_key: bytes, record_id: bytes, fields: dict[str, Any]) -> bytes:
    """Encrypt and authenticate ``fields`` (a JSON object) for the record ``record_id``."""
    return seal_document(metadata_key, PERSONAL_AAD + record_id, json.dumps(fields, separators=(",", ":")).encode())


def open_personal(metadata_key: bytes, record_id: bytes, sealed: bytes) -> dict[str, Any]:
    """The fields sealed by ``seal_personal``; ``BlobCorrupt`` for any authentication failure."""
    return codec.loads(open_document(metadata_key, PERSONAL_AAD + record_id, sealed))


def seal_document(key: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """``nonce (12 random bytes) || AES-256-GCM(key, nonce, plaintext, aad)``: the layout of the
    personal fields, also used for other small secrets the index keeps under a key it does not
    hold (a console session, under a key derived from its cookie)."""
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_document(key: bytes, aad: bytes, sealed: bytes) -> bytes:
    """The plaintext sealed by ``seal_document``; ``BlobCorrupt`` for any authentication failure."""
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
    except (InvalidTag, ValueError) as exc:
        raise BlobCorrupt("sealed document failed its integrity check") from exc
