"""Record ids: 16 bytes, time-ordered (ULID layout), written as 26 Crockford base32 characters.

The first 48 bits are the creation time in milliseconds, so new records append at the end of
the LMDB ``records`` B-tree instead of splitting pages at random; the other 80 bits are random,
so ids cannot be guessed. The id carries no personal data.
"""

from __future__ import annotations

import re
import secrets
import time

from vault.errors import NotFound

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
ID_BYTES = 16
ID_CHARS = 26
# Every search result and every audit entry converts 20 or more ids, and a per-character loop
# would cost ~5 µs an id (a tenth of a timeline search). Encoding takes two characters (10 bits)
# from a 1024-entry table; decoding checks the alphabet with one regular expression, then lets
# int() parse base 32 after mapping Crockford's digits onto Python's (0-9, a-v).
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_PAIR_SHIFTS = tuple(range(5 * ID_CHARS - 10, -1, -10))  # 120, 110, ..., 0
_ASCII_ID = re.compile(r"[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}")
_PYTHON_DIGITS = "0123456789abcdefghijklmnopqrstuv"
_TO_PYTHON_DIGITS = str.maketrans(_ALPHABET + _ALPHABET.lower(), _PYTHON_DIGITS * 2)


def new_record_id(now: float | None = None) -> bytes:
    millis = int((time.time() if now is None else now) * 1000)
    return millis.to_bytes(6, "big") + secrets.token_bytes(10)


def encode_id(raw: bytes) -> str:
    if len(raw) != ID_BYTES:
        raise ValueError("record id must be 16 bytes")
    n = int.from_bytes(raw, "big")
    return "".join([_PAIRS[(n >> shift) & 1023] for shift in _PAIR_SHIFTS])


def decode_id(text: str) -> bytes:
    """Parse an id string; anything malformed is simply not found (no oracle for callers)."""
    if len(text) != ID_CHARS:
        raise NotFound()
    if _ASCII_ID.fullmatch(text):
        n = int(text.translate(_TO_PYTHON_DIGITS), 32)
    else:
        n = _decode_other(text)
    if n >> 128:
        raise NotFound()
    return n.to_bytes(ID_BYTES, "big")


def _decode_other(text: str) -> int:
    """Text outside the alphabet, character by character after ``str.upper``, which folds a few
    non-ASCII look-alikes (``ſ`` into ``S``) into it: such text names the same id as its ASCII
    spelling; any other character is not found."""
    n = 0
    for char in text.upper():
        value = _DECODE.get(char)
        if value is None:
            raise NotFound()
        n = (n << 5) | value
    return n
