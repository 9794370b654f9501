"""No (key, nonce) pair is ever used twice: a million chunk encryptions through the real sealer.

AES-GCM loses confidentiality and authenticity if a key ever encrypts two messages under one
nonce. Every record has its own random DEK (so its own blob subkey) and every chunk of a blob
its own counter value; this test watches the real encryptions of the real sealer to show it.
"""

from __future__ import annotations

import secrets

import vault.store.sealer as sealer_module
from vault.ids import new_record_id
from vault.store.format import BlobHeader, derive_subkeys
from vault.store.sealer import BlobSealer

CHUNK_EXP = 12  # 4 KiB chunks: a million of them is 4 GiB of plaintext views over one buffer


class RecordingAead:
    """The real AESGCM, with every (key, nonce) it encrypts under written down."""

    seen: list[tuple[bytes, bytes]] = []

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._real = sealer_module.AESGCM(key)

    def encrypt_into(self, nonce, data, aad, buf):
        RecordingAead.seen.append((self._key, bytes(nonce)))
        return self._real.encrypt_into(nonce, data, aad, buf)


def test_a_million_chunk_encryptions_never_repeat_a_key_nonce_pair(monkeypatch):
    monkeypatch.setattr(sealer_module, "_aead", lambda key: RecordingAead(bytes(key)))
    RecordingAead.seen = []
    chunk = 1 << CHUNK_EXP
    payload = memoryview(secrets.token_bytes(chunk * 64))
    records, updates = 250, 63  # 250 records x 63 x 64 chunks = 1,008,000 encryptions
    for _ in range(records):
        rid = new_record_id()
        sealer = BlobSealer(derive_subkeys(secrets.token_bytes(32), rid).blob, BlobHeader.new(rid, chunk_exp=CHUNK_EXP))
        for _ in range(updates):
            sealer.update(payload)
        sealer.finalize()
    assert len(RecordingAead.seen) >= 1_000_000
    assert len(set(RecordingAead.seen)) == len(RecordingAead.seen)
