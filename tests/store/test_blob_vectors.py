"""Known-answer vectors for blob format v1 (tests/vectors/blob_v1.json).

The vectors were generated once by ``vault.store.sealer``. So that they pin the *format* and not
merely whatever the implementation does, this file also seals them with an independent,
deliberately plain re-implementation written from docs/format.md using only cryptography's
AESGCM and HKDF (no import from ``vault.store``), and checks both agree with the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault.store.format import BlobHeader, derive_subkeys
from vault.store.sealer import open_bytes, seal_bytes

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "blob_v1.json").read_text())
DEK = bytes.fromhex(VECTORS["dek_hex"])
RECORD_ID = bytes.fromhex(VECTORS["record_id_hex"])
PREFIX = bytes.fromhex(VECTORS["nonce_prefix_hex"])
CASES = VECTORS["vectors"]


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


# --- independent reference implementation (docs/format.md, nothing from vault.store) ---------


def reference_subkey(dek: bytes, record_id: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=record_id, info=info).derive(dek)


def reference_seal(dek: bytes, record_id: bytes, prefix: bytes, plaintext: bytes) -> bytes:
    chunk_exp = 16
    chunk_size = 2**chunk_exp
    header = b"IVB1" + bytes([1, 1, chunk_exp, 0]) + record_id + prefix
    aead = AESGCM(reference_subkey(dek, record_id, b"imagevault/v1/blob"))
    pieces = [plaintext[i : i + chunk_size] for i in range(0, len(plaintext), chunk_size)]
    if not pieces:
        pieces = [b""]
    blob = header
    for index, piece in enumerate(pieces):
        flag = b"\x01" if index == len(pieces) - 1 else b"\x00"
        nonce = prefix + index.to_bytes(4, "big") + flag
        blob += aead.encrypt(nonce, piece, header)
    return blob


# --- the tests ------------------------------------------------------------------------------


def test_reference_implementation_reproduces_header_and_subkeys():
    header = b"IVB1" + bytes([1, 1, 16, 0]) + RECORD_ID + PREFIX
    assert header.hex() == VECTORS["header_hex"]
    assert BlobHeader(RECORD_ID, PREFIX, 16).encode() == header
    assert (
        reference_subkey(DEK, RECORD_ID, b"imagevault/v1/blob").hex()
        == VECTORS["subkey_blob_hex"]
    )
    assert (
        reference_subkey(DEK, RECORD_ID, b"imagevault/v1/metadata").hex()
        == VECTORS["subkey_metadata_hex"]
    )
    keys = derive_subkeys(DEK, RECORD_ID)
    assert keys.blob.hex() == VECTORS["subkey_blob_hex"]
    assert keys.metadata.hex() == VECTORS["subkey_metadata_hex"]


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"size{case['plaintext_size']}")
def test_reference_implementation_matches_vector(case):
    plaintext = pattern(case["plaintext_size"])
    assert hashlib.sha256(plaintext).hexdigest() == case["plaintext_sha256"]
    blob = reference_seal(DEK, RECORD_ID, PREFIX, plaintext)
    check_blob_against_case(blob, case)


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"size{case['plaintext_size']}")
def test_seal_bytes_matches_vector(case):
    plaintext = pattern(case["plaintext_size"])
    blob = seal_bytes(DEK, RECORD_ID, plaintext, header=BlobHeader(RECORD_ID, PREFIX, 16))
    check_blob_against_case(blob, case)


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"size{case['plaintext_size']}")
def test_open_bytes_opens_vector(case):
    blob = reference_seal(DEK, RECORD_ID, PREFIX, pattern(case["plaintext_size"]))
    assert open_bytes(DEK, RECORD_ID, blob) == pattern(case["plaintext_size"])


def check_blob_against_case(blob: bytes, case: dict) -> None:
    assert len(blob) == case["sealed_size"]
    assert hashlib.sha256(blob).hexdigest() == case["sealed_sha256"]
    if "sealed_hex" in case:
        assert blob.hex() == case["sealed_hex"]
        assert pattern(case["plaintext_size"]).hex() == case["plaintext_hex"]
    else:
        assert blob[:64].hex() == case["sealed_head_hex"]
        assert blob[-48:].hex() == case["sealed_tail_hex"]
