"""Property tests: every mutation of a sealed blob fails to open with BlobCorrupt.

Small chunks (chunk_exp = 12, 4 KiB) keep examples fast while still covering blobs of
0 .. 3 chunks + 1 byte, i.e. one to four chunks with full, partial and empty last chunks.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vault.errors import BlobCorrupt
from vault.store.format import (
    HEADER_LEN,
    TAG_LEN,
    BlobHeader,
    chunk_nonce,
    derive_subkeys,
)
from vault.store.sealer import open_bytes, seal_bytes

CHUNK_EXP = 12
CS = 1 << CHUNK_EXP
DEK = bytes(range(32))
OTHER_DEK = bytes(range(100, 132))
RECORD_ID = bytes(range(0x40, 0x50))
OTHER_RECORD_ID = bytes(range(0x50, 0x60))
PREFIX = bytes(range(0xB0, 0xB7))
OTHER_PREFIX = bytes(range(0xC0, 0xC7))

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Sizes at and around chunk boundaries are where the last flag and the size rules matter
# (a full last chunk, an empty image): draw them often, not only by luck.
sizes = st.one_of(
    st.integers(min_value=0, max_value=3 * CS + 1),
    st.sampled_from([0, 1, CS - 1, CS, CS + 1, 2 * CS, 2 * CS + 1, 3 * CS, 3 * CS + 1]),
)


def sealed(size: int, *, dek=DEK, record_id=RECORD_ID, prefix=PREFIX, seed=0) -> bytes:
    plaintext = bytes((i * 13 + seed) % 256 for i in range(size))
    return seal_bytes(dek, record_id, plaintext, header=BlobHeader(record_id, prefix, CHUNK_EXP))


def chunks_of(blob: bytes) -> list[bytes]:
    step = CS + TAG_LEN
    return [blob[i : i + step] for i in range(HEADER_LEN, len(blob), step)]


def assert_corrupt(blob: bytes) -> None:
    with pytest.raises(BlobCorrupt):
        open_bytes(DEK, RECORD_ID, blob)


@SETTINGS
@given(size=sizes)
def test_unmutated_blob_opens(size):
    assert len(open_bytes(DEK, RECORD_ID, sealed(size))) == size


@SETTINGS
@given(size=sizes, data=st.data())
def test_truncated_anywhere_is_blob_corrupt(size, data):
    blob = sealed(size)
    # Chunk boundaries are where only the last flag can tell: draw them often, not by luck.
    boundaries = list(range(HEADER_LEN, len(blob), CS + TAG_LEN))
    keep = data.draw(
        st.one_of(st.integers(min_value=0, max_value=len(blob) - 1), st.sampled_from(boundaries))
    )
    assert_corrupt(blob[:keep])


@SETTINGS
@given(size=sizes, data=st.data())
def test_dropped_chunk_is_blob_corrupt(size, data):
    blob = sealed(size)
    chunks = chunks_of(blob)
    drop = data.draw(st.integers(min_value=0, max_value=len(chunks) - 1))
    del chunks[drop]
    assert_corrupt(blob[:HEADER_LEN] + b"".join(chunks))


@SETTINGS
@given(size=sizes, data=st.data())
def test_duplicated_chunk_is_blob_corrupt(size, data):
    blob = sealed(size)
    chunks = chunks_of(blob)
    source = data.draw(st.integers(min_value=0, max_value=len(chunks) - 1))
    target = data.draw(st.integers(min_value=0, max_value=len(chunks)))
    chunks.insert(target, chunks[source])
    assert_corrupt(blob[:HEADER_LEN] + b"".join(chunks))


@SETTINGS
@given(size=st.integers(min_value=CS + 1, max_value=3 * CS + 1), data=st.data())
def test_reordered_chunks_are_blob_corrupt(size, data):
    blob = sealed(size)
    chunks = chunks_of(blob)
    order = data.draw(
        st.permutations(range(len(chunks))).filter(lambda p: list(p) != sorted(p))
    )
    assert_corrupt(blob[:HEADER_LEN] + b"".join(chunks[i] for i in order))


@SETTINGS
@given(
    size=sizes,
    other_size=sizes,
    source=st.sampled_from(["other_record", "other_dek", "other_prefix"]),
    data=st.data(),
)
def test_chunk_swapped_with_another_blobs_chunk_is_blob_corrupt(size, other_size, source, data):
    blob = sealed(size)
    kwargs = {
        "other_record": {"record_id": OTHER_RECORD_ID},
        "other_dek": {"dek": OTHER_DEK},
        "other_prefix": {"prefix": OTHER_PREFIX},
    }[source]
    other = sealed(other_size, seed=1, **kwargs)
    chunks, other_chunks = chunks_of(blob), chunks_of(other)
    index = data.draw(st.integers(min_value=0, max_value=len(chunks) - 1))
    other_index = data.draw(st.integers(min_value=0, max_value=len(other_chunks) - 1))
    chunks[index] = other_chunks[other_index]
    assert_corrupt(blob[:HEADER_LEN] + b"".join(chunks))


@SETTINGS
@given(size=sizes, position=st.integers(0, HEADER_LEN - 1), xor=st.integers(1, 255))
def test_edited_header_byte_is_blob_corrupt(size, position, xor):
    blob = bytearray(sealed(size))
    blob[position] ^= xor
    assert_corrupt(bytes(blob))


@SETTINGS
@given(size=sizes, tail=st.binary(min_size=1, max_size=CS + 2 * TAG_LEN))
def test_appended_bytes_are_blob_corrupt(size, tail):
    assert_corrupt(sealed(size) + tail)


@SETTINGS
@given(size=sizes, index_shift=st.integers(-1, 1))
def test_appended_empty_final_chunk_is_blob_corrupt(size, index_shift):
    # Even a correctly keyed empty final chunk (what a key holder could forge) is refused,
    # whether it claims the next index, the real last chunk's index or one beyond.
    blob = sealed(size)
    index = len(chunks_of(blob)) + index_shift
    key = derive_subkeys(DEK, RECORD_ID).blob
    empty = AESGCM(key).encrypt(chunk_nonce(PREFIX, index, True), b"", blob[:HEADER_LEN])
    assert_corrupt(blob + empty)


@SETTINGS
@given(size=sizes, extra=st.integers(min_value=1, max_value=CS))
def test_appended_correctly_keyed_chunk_is_blob_corrupt(size, extra):
    # Extension by a key holder: the new chunk is valid at its index, but the old last chunk
    # was sealed as last and is no longer last.
    blob = sealed(size)
    key = derive_subkeys(DEK, RECORD_ID).blob
    nonce = chunk_nonce(PREFIX, len(chunks_of(blob)), True)
    assert_corrupt(blob + AESGCM(key).encrypt(nonce, bytes(extra), blob[:HEADER_LEN]))


@SETTINGS
@given(size=sizes, data=st.data())
def test_flipped_bit_anywhere_is_blob_corrupt(size, data):
    blob = bytearray(sealed(size))
    position = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    blob[position] ^= 1 << bit
    assert_corrupt(bytes(blob))


@SETTINGS
@given(size=sizes)
def test_blob_opened_as_another_record_is_blob_corrupt(size):
    with pytest.raises(BlobCorrupt):
        open_bytes(DEK, OTHER_RECORD_ID, sealed(size))
