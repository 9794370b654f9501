"""Blob format v1: header encoding, size arithmetic and nonce layout (docs/format.md)."""

from __future__ import annotations

import pytest

from vault.errors import BlobCorrupt
from vault.store.format import (
    ALG_AES256GCM_HKDF_SHA256,
    DEFAULT_CHUNK_EXP,
    FORMAT_VERSION,
    HEADER_LEN,
    MAGIC,
    NONCE_PREFIX_LEN,
    TAG_LEN,
    BlobHeader,
    Subkeys,
    chunk_count,
    chunk_nonce,
    chunk_offset,
    chunks_for_range,
    derive_subkeys,
    plaintext_size_of,
    sealed_size,
)

RECORD_ID = bytes(range(0x10, 0x20))
PREFIX = bytes(range(0xA0, 0xA7))
CS = 1 << DEFAULT_CHUNK_EXP


def header_bytes(**fields: bytes) -> bytearray:
    parts = {
        "magic": MAGIC,
        "version": bytes([FORMAT_VERSION]),
        "algorithm": bytes([ALG_AES256GCM_HKDF_SHA256]),
        "chunk_exp": bytes([DEFAULT_CHUNK_EXP]),
        "reserved": b"\x00",
        "record_id": RECORD_ID,
        "nonce_prefix": PREFIX,
    }
    parts.update(fields)
    return bytearray(b"".join(parts.values()))


def test_header_is_31_bytes_in_documented_order():
    encoded = BlobHeader(RECORD_ID, PREFIX, 16).encode()
    assert HEADER_LEN == 31
    assert encoded == bytes(header_bytes(chunk_exp=bytes([16])))
    assert encoded.hex() == "49564231010110001011121314151617" "18191a1b1c1d1e1fa0a1a2a3a4a5a6"


@pytest.mark.parametrize("chunk_exp", [12, 16, 20, 24])
def test_header_round_trips(chunk_exp):
    header = BlobHeader(RECORD_ID, PREFIX, chunk_exp)
    decoded = BlobHeader.decode(header.encode())
    assert decoded == header
    assert decoded.chunk_size == 1 << chunk_exp


def test_new_header_draws_a_random_nonce_prefix():
    first, second = BlobHeader.new(RECORD_ID), BlobHeader.new(RECORD_ID)
    assert len(first.nonce_prefix) == NONCE_PREFIX_LEN
    assert first.nonce_prefix != second.nonce_prefix
    assert first.record_id == RECORD_ID and first.chunk_exp == DEFAULT_CHUNK_EXP


@pytest.mark.parametrize("magic", [b"IVB0", b"IVB2", b"ivb1", b"\x00\x00\x00\x00", b"RIFF"])
def test_decode_rejects_wrong_magic(magic):
    with pytest.raises(BlobCorrupt):
        BlobHeader.decode(bytes(header_bytes(magic=magic)))


@pytest.mark.parametrize("version", [v for v in range(256) if v != FORMAT_VERSION])
def test_decode_rejects_every_other_format_version(version):
    with pytest.raises(BlobCorrupt):
        BlobHeader.decode(bytes(header_bytes(version=bytes([version]))))


@pytest.mark.parametrize("algorithm", [a for a in range(256) if a != ALG_AES256GCM_HKDF_SHA256])
def test_decode_rejects_every_other_algorithm_id(algorithm):
    with pytest.raises(BlobCorrupt):
        BlobHeader.decode(bytes(header_bytes(algorithm=bytes([algorithm]))))


@pytest.mark.parametrize("chunk_exp", [e for e in range(256) if not 12 <= e <= 24])
def test_decode_rejects_chunk_exponent_outside_12_to_24(chunk_exp):
    with pytest.raises(BlobCorrupt):
        BlobHeader.decode(bytes(header_bytes(chunk_exp=bytes([chunk_exp]))))


@pytest.mark.parametrize("reserved", range(1, 256))
def test_decode_rejects_nonzero_reserved_byte(reserved):
    with pytest.raises(BlobCorrupt):
        BlobHeader.decode(bytes(header_bytes(reserved=bytes([reserved]))))


@pytest.mark.parametrize("length", [0, 1, HEADER_LEN - 1, HEADER_LEN + 1, 64])
def test_decode_rejects_wrong_length(length):
    data = (bytes(header_bytes()) * 3)[:length]
    with pytest.raises(BlobCorrupt):
        BlobHeader.decode(data)


def test_header_constructor_rejects_misuse_with_value_error():
    with pytest.raises(ValueError, match="record id must be 16 bytes"):
        BlobHeader(RECORD_ID[:15], PREFIX)
    with pytest.raises(ValueError, match="nonce prefix must be 7 bytes"):
        BlobHeader(RECORD_ID, PREFIX + b"\x00")
    with pytest.raises(ValueError, match="chunk exponent"):
        BlobHeader(RECORD_ID, PREFIX, 25)


def test_derive_subkeys_is_deterministic_and_separates_purposes():
    dek = bytes(32)
    keys = derive_subkeys(dek, RECORD_ID)
    assert isinstance(keys, Subkeys)
    assert len(keys.blob) == len(keys.metadata) == 32
    assert keys.blob != keys.metadata
    assert derive_subkeys(dek, RECORD_ID) == keys
    assert derive_subkeys(dek, bytes(16)).blob != keys.blob
    assert "redacted" in repr(keys) and keys.blob.hex() not in repr(keys)


def test_derive_subkeys_rejects_wrong_lengths_with_exact_messages():
    with pytest.raises(ValueError, match=r"^data key must be 32 bytes$"):
        derive_subkeys(bytes(31), RECORD_ID)
    with pytest.raises(ValueError, match=r"^record id must be 16 bytes$"):
        derive_subkeys(bytes(32), bytes(17))


def test_chunk_nonce_is_prefix_counter_big_endian_and_last_flag():
    assert chunk_nonce(PREFIX, 0, False) == PREFIX + b"\x00\x00\x00\x00\x00"
    assert chunk_nonce(PREFIX, 1, True) == PREFIX + b"\x00\x00\x00\x01\x01"
    assert chunk_nonce(PREFIX, 0x01020304, False) == PREFIX + b"\x01\x02\x03\x04\x00"
    assert chunk_nonce(PREFIX, 2**32 - 1, True) == PREFIX + b"\xff\xff\xff\xff\x01"
    assert len(chunk_nonce(PREFIX, 7, False)) == 12


def test_chunk_nonce_refuses_a_counter_that_would_wrap():
    with pytest.raises(ValueError):
        chunk_nonce(PREFIX, 2**32, False)
    with pytest.raises(ValueError):
        chunk_nonce(PREFIX, -1, False)
    with pytest.raises(ValueError):
        chunk_nonce(PREFIX[:6], 0, False)


@pytest.mark.parametrize(
    "plaintext, chunks, sealed",
    [
        (0, 1, HEADER_LEN + TAG_LEN),
        (1, 1, HEADER_LEN + 1 + TAG_LEN),
        (65535, 1, HEADER_LEN + 65535 + TAG_LEN),
        (65536, 1, HEADER_LEN + 65536 + TAG_LEN),
        (65537, 2, HEADER_LEN + 65537 + 2 * TAG_LEN),
        (3 * 65536, 3, HEADER_LEN + 3 * 65536 + 3 * TAG_LEN),
    ],
)
def test_size_arithmetic(plaintext, chunks, sealed):
    assert chunk_count(plaintext, 16) == chunks
    assert sealed_size(plaintext, 16) == sealed
    assert plaintext_size_of(sealed, 16) == plaintext


def test_default_chunk_size_is_256_kib():
    assert 1 << DEFAULT_CHUNK_EXP == 256 * 1024
    assert sealed_size(3 * CS + 1) == HEADER_LEN + 3 * CS + 1 + 4 * TAG_LEN


def test_exact_multiple_of_chunk_size_has_no_extra_empty_chunk():
    assert chunk_count(2 * CS) == 2
    # An empty final chunk after full chunks is an impossible size.
    with pytest.raises(BlobCorrupt):
        plaintext_size_of(sealed_size(2 * CS) + TAG_LEN)


@pytest.mark.parametrize(
    "size",
    [0, 1, HEADER_LEN, HEADER_LEN + TAG_LEN - 1]
    + [sealed_size(CS) + extra for extra in range(1, TAG_LEN + 1)],
)
def test_plaintext_size_of_rejects_impossible_sizes(size):
    with pytest.raises(BlobCorrupt):
        plaintext_size_of(size)


def test_plaintext_size_of_inverts_sealed_size_for_small_chunks():
    for plaintext in range(0, 4 * 4096 + 3):
        assert plaintext_size_of(sealed_size(plaintext, 12), 12) == plaintext


def test_chunk_offsets_follow_the_header_at_fixed_stride():
    assert chunk_offset(0) == HEADER_LEN
    assert chunk_offset(1) == HEADER_LEN + CS + TAG_LEN
    assert chunk_offset(5, 12) == HEADER_LEN + 5 * (4096 + TAG_LEN)


@pytest.mark.parametrize(
    "start, end, expected",
    [
        (0, 0, range(0)),
        (0, 1, range(0, 1)),
        (0, CS, range(0, 1)),
        (CS - 1, CS + 1, range(0, 2)),
        (CS, CS + 1, range(1, 2)),
        (CS, 3 * CS, range(1, 3)),
        (3 * CS - 1, 3 * CS, range(2, 3)),
    ],
)
def test_chunks_for_range_covers_exactly_the_touched_chunks(start, end, expected):
    assert chunks_for_range(start, end) == expected


def test_chunks_for_range_rejects_reversed_or_negative_ranges():
    with pytest.raises(ValueError):
        chunks_for_range(5, 4)
    with pytest.raises(ValueError):
        chunks_for_range(-1, 4)
