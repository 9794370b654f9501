"""vault/macs.py computes exactly HMAC-SHA256 (RFC 2104), for every key length."""

from __future__ import annotations

import hmac
import random

import pytest

from vault.macs import KeyedHmac, hmac_sha256


@pytest.mark.parametrize("key_len", [0, 1, 16, 32, 63, 64, 65, 200])
def test_hmac_matches_the_standard_library_for_every_key_length(key_len):
    rng = random.Random(key_len)
    key = rng.randbytes(key_len)
    keyed = KeyedHmac(key)
    for msg_len in (0, 1, 55, 56, 64, 1000):
        message = rng.randbytes(msg_len)
        expected = hmac.digest(key, message, "sha256")
        assert hmac_sha256(key, message) == expected
        assert keyed.digest(message) == expected
        assert keyed.digest(message) == expected  # the keyed state is not consumed


def test_rfc_4231_test_case_2():
    expected = bytes.fromhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?") == expected
    assert KeyedHmac(b"Jefe").digest(b"what do ya want for nothing?") == expected
