"""Record ids: the table-driven encoder and the int()-based decoder mean exactly what the
character-by-character originals meant, for every input."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.errors import NotFound
from vault.ids import ID_CHARS, decode_id, encode_id, new_record_id

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def reference_encode(raw: bytes) -> str:
    n = int.from_bytes(raw, "big")
    return "".join(ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(ID_CHARS)))


def reference_decode(text: str) -> bytes | None:
    """The original decoder; None where it raised NotFound."""
    if len(text) != ID_CHARS:
        return None
    n = 0
    for char in text.upper():
        if char not in ALPHABET:
            return None
        n = (n << 5) | ALPHABET.index(char)
    return None if n >> 128 else n.to_bytes(16, "big")


def decoded(text: str) -> bytes | None:
    try:
        return decode_id(text)
    except NotFound:
        return None


@pytest.mark.parametrize("raw", [bytes(16), b"\xff" * 16, bytes(15) + b"\x01", b"\x80" + bytes(15)])
def test_extreme_ids_encode_as_the_reference_and_round_trip(raw):
    assert encode_id(raw) == reference_encode(raw)
    assert decode_id(encode_id(raw)) == raw


def test_random_ids_encode_as_the_reference_and_round_trip_in_either_case():
    for raw in [new_record_id()] + [secrets.token_bytes(16) for _ in range(2000)]:
        text = encode_id(raw)
        assert text == reference_encode(raw)
        assert decode_id(text) == decode_id(text.lower()) == raw


@pytest.mark.parametrize("text", [
    "8" + "0" * 25,            # 130 bits that do not fit in 128
    "Z" * 26,
    "0" * 25,                  # too short
    "0" * 27,                  # too long
    "0" * 25 + "I",            # letters Crockford leaves out
    "0" * 25 + "U",
    "0" * 24 + "_1",           # what int() would otherwise accept: separators, signs, space
    "+" + "0" * 25,
    " " + "0" * 25,
    "0" * 25 + "\n",
])
def test_malformed_ids_are_not_found(text):
    assert reference_decode(text) is None
    with pytest.raises(NotFound):
        decode_id(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=ALPHABET + ALPHABET.lower() + "ILOUilou_+- \nſßıK", min_size=24, max_size=28))
def test_any_text_decodes_exactly_as_the_reference_decoder(text):
    assert decoded(text) == reference_decode(text)
