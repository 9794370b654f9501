"""Record ids: 16 bytes, time-ordered (ULID layout), written as 26 Crockford base32 characters.

The first 48 bits are the creation time in milliseconds, so new records append at the end of
the LMDB ``records`` B-tree instead of splitting pages at random; the other 80 bits are random,
so ids cannot be guessed. The id carries no personal data.
"""

from __future__ import annotations

import secrets
import time

from vault.errors import NotFound

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
ID_BYTES = 16
ID_CHARS = 26


def new_record_id(now: float | None = None) -> bytes:
    millis = int((time.time() if now is None else now) * 1000)
    return millis.to_bytes(6, "big") + secrets.token_bytes(10)


def encode_id(raw: bytes) -> str:
    if len(raw) != ID_BYTES:
        raise ValueError("record id must be 16 bytes")
    n = int.from_bytes(raw, "big")
    return "".join(_ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(ID_CHARS)))


def decode_id(text: str) -> bytes:
    """Parse an id string; anything malformed is simply not found (no oracle for callers)."""
    if len(text) != ID_CHARS:
        raise NotFound()
    n = 0
    for char in text.upper():
        value = _DECODE.get(char)
        if value is None:
            raise NotFound()
        n = (n << 5) | value
    if n >> 128:
        raise NotFound()
    return n.to_bytes(ID_BYTES, "big")
