"""The seal/open recipe: round trips, ranged reads from a real FsBackend, tampering."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.errors import BlobCorrupt
from vault.ids import encode_id, new_record_id
from vault.store.backends.fs import FsBackend
from vault.store.format import (
    DEFAULT_CHUNK_EXP,
    HEADER_LEN,
    TAG_LEN,
    BlobHeader,
    chunk_nonce,
    chunk_offset,
    derive_subkeys,
    sealed_size,
)
from vault.store.sealer import (
    BlobOpener,
    BlobSealer,
    open_bytes,
    open_range,
    plaintext_size,
    seal_bytes,
)

CS = 1 << DEFAULT_CHUNK_EXP
SIZES = [0, 1, CS - 1, CS, CS + 1, 5 * CS + 3]
DEK = bytes(range(32))
OTHER_DEK = bytes(range(1, 33))
PIECES = [1, 7, 4095, 65535, 65537, 100_003, 3]


def pattern(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 256 for i in range(size))


def seal_in_pieces(
    key: bytes, header: BlobHeader, plaintext: bytes, pieces: list[int]
) -> tuple[bytes, BlobSealer]:
    sealer = BlobSealer(key, header)
    out = [sealer.header_bytes]
    view = memoryview(plaintext)
    sizes = itertools.cycle(pieces)
    pos = 0
    while pos < len(plaintext):
        step = next(sizes)
        out.append(sealer.update(view[pos : pos + step]))
        pos += step
    out.append(sealer.finalize())
    return b"".join(out), sealer


def split_chunks(blob: bytes, chunk_exp: int = DEFAULT_CHUNK_EXP) -> tuple[bytes, list[bytes]]:
    step = (1 << chunk_exp) + TAG_LEN
    return blob[:HEADER_LEN], [blob[i : i + step] for i in range(HEADER_LEN, len(blob), step)]


@pytest.fixture
def backend(tmp_path: Path) -> FsBackend:
    return FsBackend(tmp_path / "blobs")


async def store(backend: FsBackend, blob_id: str, blob: bytes) -> None:
    writer = await backend.open_writer(blob_id)
    await writer.write(blob)
    await writer.commit()


async def read_range(backend, blob_id, key, record_id, start, end, **kwargs) -> bytes:
    stream = open_range(backend, blob_id, key, record_id, start, end, **kwargs)
    parts = [part async for part in stream]
    return b"".join(parts)


async def read_until_failure(backend, blob_id, key, record_id, start, end) -> bytes:
    """Everything open_range yielded before it raised BlobCorrupt (it must raise)."""
    received = bytearray()
    with pytest.raises(BlobCorrupt):
        async for part in open_range(backend, blob_id, key, record_id, start, end):
            received += part
    return bytes(received)


# --- sealing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_with_odd_feed_pieces(size):
    record_id = new_record_id()
    plaintext = pattern(size)
    key = derive_subkeys(DEK, record_id).blob
    blob, sealer = seal_in_pieces(key, BlobHeader.new(record_id), plaintext, PIECES)
    assert len(blob) == sealed_size(size)
    assert sealer.plaintext_size == size
    assert sealer.sha256_hex == hashlib.sha256(plaintext).hexdigest()
    assert open_bytes(DEK, record_id, blob) == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_piece_sizes_do_not_change_the_sealed_blob(size):
    record_id = new_record_id()
    header = BlobHeader.new(record_id)
    key = derive_subkeys(DEK, record_id).blob
    plaintext = pattern(size)
    whole, _ = seal_in_pieces(key, header, plaintext, [max(size, 1)])
    bytewise, _ = seal_in_pieces(key, header, plaintext, [CS, 1, CS - 1, 2 * CS + 5])
    assert whole == bytewise == seal_bytes(DEK, record_id, plaintext, header=header)


@pytest.mark.parametrize("size", SIZES)
def test_batches_sealed_into_the_reused_scratch_buffer_make_the_same_blob(size):
    # The upload path writes each batch out of the sealer's scratch buffer before sealing the
    # next one; batches of different sizes must neither leak old bytes nor lose any.
    record_id = new_record_id()
    header = BlobHeader.new(record_id)
    sealer = BlobSealer(derive_subkeys(DEK, record_id).blob, header)
    plaintext = pattern(size)
    blob = bytearray(sealer.header_bytes)
    view, batches = memoryview(plaintext), [3 * CS + 5, 1, 5 * CS, CS - 1, 2 * CS]
    at = 0
    for number in itertools.count():
        if at >= size:
            break
        take = batches[number % len(batches)]
        out = sealer.update_many([view[at:at + take]], scratch=True)
        blob += out  # copied out before the next batch, as write_blocking writes it
        at += take
    blob += sealer.finalize()
    assert bytes(blob) == seal_bytes(DEK, record_id, plaintext, header=header)


def test_sealer_holds_back_a_full_chunk_until_it_knows_it_is_not_last():
    record_id = new_record_id()
    sealer = BlobSealer(derive_subkeys(DEK, record_id).blob, BlobHeader.new(record_id))
    assert sealer.update(bytes(CS)) == b""
    assert len(sealer.update(b"\x01")) == CS + TAG_LEN
    assert len(sealer.finalize()) == 1 + TAG_LEN


def test_empty_image_is_one_empty_final_chunk():
    record_id = new_record_id()
    sealer = BlobSealer(derive_subkeys(DEK, record_id).blob, BlobHeader.new(record_id))
    assert sealer.update(b"") == b""
    assert len(sealer.finalize()) == TAG_LEN
    assert sealer.plaintext_size == 0
    assert sealer.sha256_hex == hashlib.sha256(b"").hexdigest()


def test_update_after_finalize_raises_value_error():
    record_id = new_record_id()
    sealer = BlobSealer(derive_subkeys(DEK, record_id).blob, BlobHeader.new(record_id))
    sealer.finalize()
    with pytest.raises(ValueError):
        sealer.update(b"x")
    with pytest.raises(ValueError):
        sealer.finalize()


def test_digest_and_size_are_unavailable_before_finalize():
    record_id = new_record_id()
    sealer = BlobSealer(derive_subkeys(DEK, record_id).blob, BlobHeader.new(record_id))
    sealer.update(b"abc")
    with pytest.raises(ValueError):
        sealer.sha256_hex
    with pytest.raises(ValueError):
        sealer.plaintext_size


def test_a_sealer_without_digest_writes_the_same_blob_and_has_no_digest():
    """Staged upload segments skip the SHA-256; the blob itself is the same, and asking for
    the digest it never took is an error, not a wrong answer."""
    record_id = new_record_id()
    header = BlobHeader.new(record_id)
    key = derive_subkeys(DEK, record_id).blob
    plaintext = pattern(3 * CS + 11)
    sealer = BlobSealer(key, header, sha256=False)
    blob = sealer.header_bytes + bytes(sealer.update_many([plaintext[:CS + 5], plaintext[CS + 5:]])) + sealer.finalize()
    assert blob == seal_bytes(DEK, record_id, plaintext, header=header)
    assert sealer.plaintext_size == len(plaintext)
    with pytest.raises(ValueError, match="without a digest"):
        sealer.sha256_hex


def test_wrong_key_length_is_a_value_error():
    record_id = new_record_id()
    with pytest.raises(ValueError, match="^blob key must be 32 bytes$"):
        BlobSealer(bytes(16), BlobHeader.new(record_id))
    with pytest.raises(ValueError, match="^blob key must be 32 bytes$"):
        BlobOpener(bytes(16), record_id, BlobHeader.new(record_id).encode())


def test_seal_bytes_refuses_a_header_of_another_record():
    with pytest.raises(ValueError):
        seal_bytes(DEK, new_record_id(), b"x", header=BlobHeader.new(new_record_id()))


def test_same_plaintext_seals_differently_each_time():
    record_id = new_record_id()
    assert seal_bytes(DEK, record_id, b"same") != seal_bytes(DEK, record_id, b"same")


def test_small_chunk_size_round_trips():
    record_id = new_record_id()
    plaintext = pattern(3 * 4096 + 1)
    blob = seal_bytes(DEK, record_id, plaintext, header=BlobHeader.new(record_id, chunk_exp=12))
    assert len(blob) == sealed_size(len(plaintext), 12)
    assert open_bytes(DEK, record_id, blob) == plaintext


# --- ranged reads ----------------------------------------------------------------------------

RANGE_SIZE = 5 * CS + 3


def interesting_offsets(size: int) -> list[int]:
    points = {0, 1, size - 1, size}
    for boundary in range(CS, size, CS):
        points.update({boundary - 1, boundary, boundary + 1})
    return sorted(p for p in points if 0 <= p <= size)


@pytest.fixture
async def stored(backend):
    record_id = new_record_id()
    plaintext = pattern(RANGE_SIZE, seed=3)
    blob_id = encode_id(record_id)
    await store(backend, blob_id, seal_bytes(DEK, record_id, plaintext))
    return blob_id, record_id, derive_subkeys(DEK, record_id).blob, plaintext


async def test_open_range_returns_exactly_the_requested_bytes(backend, stored):
    blob_id, record_id, key, plaintext = stored
    offsets = interesting_offsets(RANGE_SIZE)
    for start in offsets:
        for end in offsets:
            if end < start:
                continue
            got = await read_range(backend, blob_id, key, record_id, start, end, batch_chunks=2)
            assert got == plaintext[start:end], (start, end)


@pytest.mark.parametrize("batch_chunks", [1, 2, 3, 16])
async def test_open_range_whole_blob_for_any_batch_size(backend, stored, batch_chunks):
    blob_id, record_id, key, plaintext = stored
    got = await read_range(
        backend, blob_id, key, record_id, 0, RANGE_SIZE, batch_chunks=batch_chunks
    )
    assert got == plaintext


@pytest.mark.parametrize("size", SIZES)
async def test_open_range_whole_blob_for_every_size(backend, size):
    record_id = new_record_id()
    blob_id = encode_id(record_id)
    plaintext = pattern(size)
    await store(backend, blob_id, seal_bytes(DEK, record_id, plaintext))
    key = derive_subkeys(DEK, record_id).blob
    assert await read_range(backend, blob_id, key, record_id, 0, size) == plaintext
    assert await plaintext_size(backend, blob_id) == size


class RecordingBackend(FsBackend):
    """A real FsBackend that also records which byte ranges were read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[tuple[int, int]] = []

    async def read(self, blob_id: str, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return await super().read(blob_id, offset, length)


async def test_open_range_reads_only_the_chunks_it_touches_in_batches(tmp_path):
    backend = RecordingBackend(tmp_path / "blobs")
    record_id = new_record_id()
    blob_id = encode_id(record_id)
    plaintext = pattern(40 * CS + 9)
    await store(backend, blob_id, seal_bytes(DEK, record_id, plaintext))
    key = derive_subkeys(DEK, record_id).blob
    start, end = 3 * CS + 10, 30 * CS - 1  # chunks 3..29: 27 chunks
    got = await read_range(backend, blob_id, key, record_id, start, end, batch_chunks=16)
    assert got == plaintext[start:end]
    step = CS + TAG_LEN
    assert backend.reads == [
        (0, HEADER_LEN),
        (chunk_offset(3), 16 * step),
        (chunk_offset(19), 11 * step),
    ]


async def test_empty_image_range_verifies_its_only_chunk(backend):
    record_id = new_record_id()
    blob_id = encode_id(record_id)
    blob = bytearray(seal_bytes(DEK, record_id, b""))
    key = derive_subkeys(DEK, record_id).blob
    await store(backend, blob_id, bytes(blob))
    assert await read_range(backend, blob_id, key, record_id, 0, 0) == b""
    blob[-1] ^= 1
    other = encode_id(new_record_id())
    await store(backend, other, bytes(blob))
    with pytest.raises(BlobCorrupt):
        await read_range(backend, other, key, record_id, 0, 0)


async def test_range_past_what_the_blob_holds_is_blob_corrupt(backend, stored):
    blob_id, record_id, key, _ = stored
    with pytest.raises(BlobCorrupt):
        await read_range(backend, blob_id, key, record_id, 0, RANGE_SIZE + 1)


async def test_expected_size_mismatch_fails_before_any_byte(backend, stored):
    blob_id, record_id, key, _ = stored
    received = []
    with pytest.raises(BlobCorrupt):
        async for part in open_range(
            backend, blob_id, key, record_id, 0, 10, expected_size=RANGE_SIZE + CS
        ):
            received.append(part)
    assert received == []
    got = await read_range(backend, blob_id, key, record_id, 0, 10, expected_size=RANGE_SIZE)
    assert len(got) == 10


async def test_invalid_range_is_value_error(backend, stored):
    blob_id, record_id, key, _ = stored
    with pytest.raises(ValueError):
        await read_range(backend, blob_id, key, record_id, 5, 4)
    with pytest.raises(ValueError):
        await read_range(backend, blob_id, key, record_id, -1, 4)


class ShrinkingBackend(FsBackend):
    """A real FsBackend whose blob loses its tail right after its size was read (a concurrent
    truncation), so the following read comes back short."""

    async def size(self, blob_id: str) -> int:
        size = await super().size(blob_id)
        os.truncate(self.path_of(blob_id), size - 100)
        return size


async def test_short_read_is_blob_corrupt(tmp_path):
    backend = ShrinkingBackend(tmp_path / "blobs")
    record_id = new_record_id()
    blob_id = encode_id(record_id)
    plaintext = pattern(2 * CS + 500)
    await store(backend, blob_id, seal_bytes(DEK, record_id, plaintext))
    key = derive_subkeys(DEK, record_id).blob
    received = bytearray()
    with pytest.raises(BlobCorrupt):
        async for part in open_range(backend, blob_id, key, record_id, 0, len(plaintext)):
            received += part
    assert received == b""


# --- tampering: every case is BlobCorrupt and yields nothing of the bad chunk -----------------

TAMPER_SIZE = 4 * CS + 100  # five chunks, the last one partial


@pytest.fixture
def sealed():
    record_id = new_record_id()
    plaintext = pattern(TAMPER_SIZE, seed=5)
    blob = seal_bytes(DEK, record_id, plaintext)
    return record_id, plaintext, blob


async def assert_fails_after(backend, record_id, plaintext, blob, good_chunks, start=0, end=None):
    """Store ``blob`` and read [start, end): it must raise BlobCorrupt having yielded at most
    the plaintext of the first ``good_chunks`` chunks (those that were not tampered with)."""
    blob_id = encode_id(record_id)
    await store(backend, blob_id, blob)
    key = derive_subkeys(DEK, record_id).blob
    end = len(plaintext) if end is None else end
    received = await read_until_failure(backend, blob_id, key, record_id, start, end)
    assert plaintext[start:end].startswith(received)
    assert start + len(received) <= good_chunks * CS
    with pytest.raises(BlobCorrupt):
        open_bytes(DEK, record_id, blob)


@pytest.mark.parametrize("chunk", range(5))
async def test_flipped_bit_in_a_chunk_is_blob_corrupt(backend, sealed, chunk):
    record_id, plaintext, blob = sealed
    mutated = bytearray(blob)
    mutated[chunk_offset(chunk) + 17] ^= 0x04
    await assert_fails_after(backend, record_id, plaintext, bytes(mutated), good_chunks=chunk)


@pytest.mark.parametrize("position", range(HEADER_LEN))
async def test_edited_header_byte_is_blob_corrupt(backend, sealed, position):
    record_id, plaintext, blob = sealed
    mutated = bytearray(blob)
    mutated[position] ^= 0x01
    await assert_fails_after(backend, record_id, plaintext, bytes(mutated), good_chunks=0)


@pytest.mark.parametrize("chunks_kept", [0, 1, 2, 4])
async def test_truncated_at_a_chunk_boundary_is_blob_corrupt(backend, sealed, chunks_kept):
    record_id, plaintext, blob = sealed
    mutated = blob[: chunk_offset(chunks_kept)]
    # The new final chunk was sealed as "not last": it fails; those before it are authentic.
    await assert_fails_after(
        backend, record_id, plaintext, mutated, good_chunks=max(chunks_kept - 1, 0),
        end=min(len(plaintext), chunks_kept * CS),
    )


@pytest.mark.parametrize("cut", [1, 15, 16, 17, 50, 116, 117, CS + 17])
async def test_truncated_between_chunk_boundaries_is_blob_corrupt(backend, sealed, cut):
    record_id, plaintext, blob = sealed
    mutated = blob[:-cut]
    good_chunks = 4 if cut < 116 else 3  # the last chunk is 100 + 16 bytes long
    await assert_fails_after(
        backend, record_id, plaintext, mutated, good_chunks=good_chunks, end=len(plaintext) - cut
    )


async def test_truncated_to_part_of_the_header_is_blob_corrupt(backend, sealed):
    record_id, plaintext, blob = sealed
    blob_id = encode_id(record_id)
    await store(backend, blob_id, blob[:20])
    key = derive_subkeys(DEK, record_id).blob
    assert await read_until_failure(backend, blob_id, key, record_id, 0, 0) == b""


async def test_last_chunk_dropped_is_blob_corrupt(backend, sealed):
    record_id, plaintext, blob = sealed
    header, chunks = split_chunks(blob)
    mutated = header + b"".join(chunks[:-1])
    await assert_fails_after(backend, record_id, plaintext, mutated, good_chunks=3, end=4 * CS)


async def test_middle_chunk_dropped_is_blob_corrupt(backend, sealed):
    record_id, plaintext, blob = sealed
    header, chunks = split_chunks(blob)
    mutated = header + b"".join(chunks[:2] + chunks[3:])
    await assert_fails_after(
        backend, record_id, plaintext, mutated, good_chunks=2, end=3 * CS + 100
    )


def real_empty_final_chunk(record_id: bytes, blob: bytes, index: int) -> bytes:
    """What an attacker holding the key could append; without the key nothing better exists."""
    header = BlobHeader.decode(blob[:HEADER_LEN])
    key = derive_subkeys(DEK, record_id).blob
    nonce = chunk_nonce(header.nonce_prefix, index, True)
    return AESGCM(key).encrypt(nonce, b"", blob[:HEADER_LEN])


async def test_empty_final_chunk_appended_is_blob_corrupt(backend, sealed):
    record_id, plaintext, blob = sealed
    mutated = blob + real_empty_final_chunk(record_id, blob, 5)
    await assert_fails_after(backend, record_id, plaintext, mutated, good_chunks=4)


async def test_empty_final_chunk_appended_after_full_chunks_is_blob_corrupt(backend):
    record_id = new_record_id()
    plaintext = pattern(2 * CS)
    blob = seal_bytes(DEK, record_id, plaintext)
    mutated = blob + real_empty_final_chunk(record_id, blob, 2)
    await assert_fails_after(backend, record_id, plaintext, mutated, good_chunks=0)


async def test_two_chunks_swapped_is_blob_corrupt(backend, sealed):
    record_id, plaintext, blob = sealed
    header, chunks = split_chunks(blob)
    chunks[1], chunks[2] = chunks[2], chunks[1]
    mutated = header + b"".join(chunks)
    await assert_fails_after(backend, record_id, plaintext, mutated, good_chunks=1)


async def test_chunk_duplicated_is_blob_corrupt(backend, sealed):
    record_id, plaintext, blob = sealed
    header, chunks = split_chunks(blob)
    mutated = header + b"".join(chunks[:2] + [chunks[1]] + chunks[2:])
    await assert_fails_after(backend, record_id, plaintext, mutated, good_chunks=2)


async def test_chunk_overwritten_by_its_neighbour_is_blob_corrupt(backend, sealed):
    record_id, plaintext, blob = sealed
    header, chunks = split_chunks(blob)
    chunks[2] = chunks[1]
    mutated = header + b"".join(chunks)
    await assert_fails_after(backend, record_id, plaintext, mutated, good_chunks=2)


async def test_blob_of_another_record_copied_over_is_blob_corrupt(backend, sealed):
    record_id, plaintext, _ = sealed
    other_record = new_record_id()
    # Same DEK even (worst case): the record id in the header and in the HKDF salt differ.
    foreign = seal_bytes(DEK, other_record, plaintext)
    await assert_fails_after(backend, record_id, plaintext, foreign, good_chunks=0)


async def test_blob_of_another_record_with_rewritten_record_id_is_blob_corrupt(backend, sealed):
    record_id, plaintext, _ = sealed
    foreign = bytearray(seal_bytes(DEK, new_record_id(), plaintext))
    foreign[8:24] = record_id  # the header now names our record; the chunks do not agree
    await assert_fails_after(backend, record_id, plaintext, bytes(foreign), good_chunks=0)


async def test_blob_of_same_size_under_a_different_dek_is_blob_corrupt(backend, sealed):
    record_id, plaintext, blob = sealed
    impostor = seal_bytes(OTHER_DEK, record_id, pattern(TAMPER_SIZE, seed=9))
    assert len(impostor) == len(blob)
    await assert_fails_after(backend, record_id, plaintext, impostor, good_chunks=0)


async def test_range_that_avoids_a_tampered_chunk_is_still_served(backend, sealed):
    # Chunks are authenticated independently: a range only fails if it touches the bad chunk.
    record_id, plaintext, blob = sealed
    mutated = bytearray(blob)
    mutated[chunk_offset(3) + 5] ^= 0x80
    blob_id = encode_id(record_id)
    await store(backend, blob_id, bytes(mutated))
    key = derive_subkeys(DEK, record_id).blob
    assert await read_range(backend, blob_id, key, record_id, 0, 3 * CS) == plaintext[: 3 * CS]
    received = await read_until_failure(backend, blob_id, key, record_id, 2 * CS, 4 * CS)
    assert received == plaintext[2 * CS : 3 * CS]


def test_opener_rejects_an_empty_chunk_anywhere_but_first():
    record_id = new_record_id()
    header = BlobHeader.new(record_id)
    key = derive_subkeys(DEK, record_id).blob
    opener = BlobOpener(key, record_id, header.encode())
    tag = AESGCM(key).encrypt(chunk_nonce(header.nonce_prefix, 3, True), b"", header.encode())
    with pytest.raises(BlobCorrupt):
        opener.open_chunk(3, tag, last=True)


def test_opener_maps_invalid_tag_to_blob_corrupt_with_cause():
    record_id = new_record_id()
    blob = seal_bytes(DEK, record_id, b"hello")
    opener = BlobOpener(derive_subkeys(DEK, record_id).blob, record_id, blob[:HEADER_LEN])
    assert opener.open_chunk(0, blob[HEADER_LEN:], last=True) == b"hello"
    with pytest.raises(BlobCorrupt) as info:
        opener.open_chunk(1, blob[HEADER_LEN:], last=True)
    assert isinstance(info.value.__cause__, InvalidTag)
    with pytest.raises(BlobCorrupt):
        opener.open_chunk(0, blob[HEADER_LEN:], last=False)
