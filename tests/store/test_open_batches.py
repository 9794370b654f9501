"""open_range on an executor (the daemon's path): same bytes as inline, nothing unauthenticated."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vault.errors import BlobCorrupt
from vault.ids import encode_id, new_record_id
from vault.store.backends.fs import FsBackend
from vault.store.format import DEFAULT_CHUNK_EXP, chunk_offset, derive_subkeys
from vault.store.sealer import open_range, seal_bytes

CS = 1 << DEFAULT_CHUNK_EXP
DEK = bytes(range(32))


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


async def stored(tmp_path: Path, size: int, seed: int = 1) -> tuple[FsBackend, bytes, bytes, bytes]:
    backend = FsBackend(tmp_path / "blobs")
    record_id = new_record_id()
    plaintext = random.Random(seed).randbytes(size)
    writer = await backend.open_writer(encode_id(record_id))
    await writer.write(seal_bytes(DEK, record_id, plaintext))
    await writer.commit()
    return backend, record_id, plaintext, derive_subkeys(DEK, record_id).blob


async def read(backend, record_id, key, start, end, **kwargs) -> list[bytes]:
    return [bytes(p) async for p in open_range(backend, encode_id(record_id), key, record_id, start, end, **kwargs)]


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 16 * CS, 16 * CS + 1, 40 * CS + 123])
async def test_executor_path_yields_the_same_bytes_for_every_range(tmp_path, pool, size):
    backend, record_id, plaintext, key = await stored(tmp_path, size)
    edges = sorted({0, 1, CS - 1, CS, CS + 1, 16 * CS - 1, 16 * CS, 17 * CS + 5, size // 2, size - 1, size})
    ranges = [(a, b) for a in edges for b in edges if 0 <= a <= b <= size]
    for start, end in ranges:
        batched = await read(backend, record_id, key, start, end, executor=pool)
        assert b"".join(batched) == plaintext[start:end]
        assert b"".join(await read(backend, record_id, key, start, end)) == plaintext[start:end]
        # One piece per batch of 16 chunks.
        assert len(batched) == len(range(start // CS, -(-end // CS), 16)) if end > start else not batched


@pytest.mark.parametrize("bad_chunk", [0, 5, 15, 16, 20, 40])
async def test_executor_path_yields_nothing_of_a_batch_with_a_tampered_chunk(tmp_path, pool, bad_chunk):
    backend, record_id, plaintext, key = await stored(tmp_path, 40 * CS + 123)
    path = backend.path_of(encode_id(record_id))
    blob = bytearray(path.read_bytes())
    blob[chunk_offset(bad_chunk) + 9] ^= 0x10
    path.write_bytes(bytes(blob))
    received = bytearray()
    with pytest.raises(BlobCorrupt):
        async for piece in open_range(backend, encode_id(record_id), key, record_id, 0, len(plaintext), executor=pool):
            received += piece
    assert plaintext.startswith(bytes(received))
    assert len(received) == (bad_chunk // 16) * 16 * CS  # whole good batches only


def test_metadata_key_alone_is_the_metadata_subkey():
    from vault.store.format import derive_metadata_key

    for seed in range(5):
        dek, record_id = random.Random(seed).randbytes(32), new_record_id()
        assert derive_metadata_key(dek, record_id) == derive_subkeys(dek, record_id).metadata


# Reused plaintext buffers ----------------------------------------------------------------------
def test_released_buffer_is_handed_out_again_and_other_sizes_are_fresh():
    from vault.store.sealer import PlaintextBuffers

    buffers = PlaintextBuffers(4 * CS)
    first = buffers.take(4 * CS)
    assert buffers.release(first)
    assert buffers.take(4 * CS) is first and buffers.reused == 1
    assert len(buffers.take(CS)) == CS  # a short batch never gets a pooled buffer
    assert not buffers.release(bytearray(CS)) and not buffers.release(bytes(4 * CS))


def test_a_buffer_still_viewed_elsewhere_is_not_taken_back():
    from vault.store.sealer import PlaintextBuffers

    buffers = PlaintextBuffers(CS)
    piece = buffers.take(CS)
    held = memoryview(piece)[10:20]  # as a transport holding the unsent tail would
    assert not buffers.release(piece)
    assert buffers.take(CS) is not piece
    held.release()
    assert buffers.release(piece)
    assert not buffers.release(piece)  # never twice in the free list


async def test_reused_buffers_carry_only_the_current_blobs_bytes(tmp_path, pool):
    from vault.store.sealer import PlaintextBuffers

    buffers = PlaintextBuffers(16 * CS)
    blobs = [await stored(tmp_path / str(seed), 40 * CS + 7 * seed, seed) for seed in range(1, 5)]
    for _ in range(2):
        for backend, record_id, plaintext, key in blobs:
            got = bytearray()
            async for piece in open_range(backend, encode_id(record_id), key, record_id, 0, len(plaintext),
                                          executor=pool, buffers=buffers):
                got += piece
                buffers.release(piece)
            assert bytes(got) == plaintext
    assert buffers.reused > 0


async def test_a_tampered_batch_never_comes_out_of_a_reused_buffer(tmp_path, pool):
    from vault.store.sealer import PlaintextBuffers

    buffers = PlaintextBuffers(16 * CS)
    backend, record_id, plaintext, key = await stored(tmp_path, 40 * CS)
    async for piece in open_range(backend, encode_id(record_id), key, record_id, 0, len(plaintext),
                                  executor=pool, buffers=buffers):
        buffers.release(piece)
    path = backend.path_of(encode_id(record_id))
    blob = bytearray(path.read_bytes())
    blob[chunk_offset(20) + 3] ^= 0x01
    path.write_bytes(bytes(blob))
    received = bytearray()
    with pytest.raises(BlobCorrupt):
        async for piece in open_range(backend, encode_id(record_id), key, record_id, 0, len(plaintext),
                                      executor=pool, buffers=buffers):
            received += piece
            buffers.release(piece)
    assert bytes(received) == plaintext[:16 * CS]
