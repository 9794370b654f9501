"""The seal/open recipe for blobs: AES-256-GCM stays inside, callers never see a nonce.

Sealing (write path)::

    keys = derive_subkeys(dek, record_id)
    sealer = BlobSealer(keys.blob, BlobHeader.new(record_id))
    await writer.write(sealer.header_bytes)
    for piece in body:                      # pieces of any size
        await writer.write(sealer.update(piece))
    await writer.write(sealer.finalize())
    sealer.plaintext_size, sealer.sha256_hex  # for the record

Opening (read path): ``open_range`` streams any byte range, reading and authenticating only the
chunks it touches. ``BlobOpener`` is the per-chunk primitive underneath; ``seal_bytes`` and
``open_bytes`` are whole-blob helpers for tests and tools.

Lifecycle: a ``BlobSealer`` is used once: any number of ``update`` calls, then one
``finalize``. A ``BlobOpener`` holds no state beyond the key and the header and may open
chunks in any order.

Every integrity failure raises ``BlobCorrupt`` (the caller learns only that the blob must not
be served); misuse raises ``ValueError``. No plaintext byte of a chunk is returned before that
chunk has been authenticated.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from concurrent.futures import Executor

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.errors import BlobCorrupt
from vault.store.backends.base import BlobBackend
from vault.store.format import (
    DEFAULT_CHUNK_EXP,
    HEADER_LEN,
    KEY_LEN,
    TAG_LEN,
    BlobHeader,
    chunk_count,
    chunk_nonce,
    chunk_offset,
    chunks_for_range,
    derive_subkeys,
    plaintext_size_of,
    sealed_size,
)


def _aead(blob_key: bytes) -> AESGCM:
    if len(blob_key) != KEY_LEN:
        raise ValueError("blob key must be 32 bytes")
    return AESGCM(bytes(blob_key))


class BlobSealer:
    """Encrypts one image as a stream of chunks under ``blob_key`` (the blob subkey).

    ``update`` returns the ciphertext of every chunk that is complete and known not to be the
    last one; it therefore holds back between 1 and ``chunk_size`` bytes (the chunk that may
    turn out to be the last) until more data arrives or ``finalize`` seals it with the last
    flag. Every chunk is authenticated with the header as AAD.
    """

    def __init__(self, blob_key: bytes, header: BlobHeader, *, sha256: bool = True) -> None:
        self._aead = _aead(blob_key)
        self._header = header
        self._header_bytes = header.encode()
        self._chunk_size = header.chunk_size
        self._pending = bytearray()  # at most one chunk: the one that may be last
        self._index = 0
        # ``sha256=False``: a blob whose digest nobody reads (a staged upload segment: the
        # record's digest is taken when the whole upload goes through the ingest) skips it,
        # about as much CPU as the encryption itself.
        self._sha256 = hashlib.sha256() if sha256 else None
        self._size = 0
        self._finalized = False
        self._scratch = bytearray()  # update_many(scratch=True): reused for every batch

    @property
    def header(self) -> BlobHeader:
        return self._header

    @property
    def header_bytes(self) -> bytes:
        """The header to write before the first chunk."""
        return self._header_bytes

    def update(self, data: bytes) -> bytes:
        return bytes(self.update_many([data]))

    def update_many(self, pieces: list[bytes] | tuple[bytes, ...], *, scratch: bool = False) -> bytearray | memoryview:
        """``update`` for several pieces at once, returning one fresh buffer the caller owns.

        Built for the upload path, where it runs on a crypto thread once per ~MiB batch:
        chunks that lie inside one piece are encrypted straight from it (a memoryview, no
        copy); only a chunk that straddles pieces is assembled in the held-back buffer first.
        Copying every piece into one buffer first costs ~14% of the daemon's CPU under 16
        concurrent uploads (profiled).

        ``scratch=True``: the ciphertext goes into a buffer this sealer keeps and reuses, and a
        view of it is returned that is valid only until the next ``update_many``: for a caller
        that writes it out before sealing more (the filesystem upload path writes it in the same
        thread job). A fresh zero-filled MiB per batch costs about as much as hashing a third of it.
        """
        if self._finalized:
            raise ValueError("update() called after finalize()")
        chunk_size = self._chunk_size
        pending = self._pending
        views = [memoryview(piece).cast("B") for piece in pieces]
        received = 0
        for view in views:
            if self._sha256 is not None:
                self._sha256.update(view)
            received += len(view)
        self._size += received
        total = len(pending) + received
        # Seal all but the final 1..chunk_size bytes: they may be the last chunk.
        ready = (total - 1) // chunk_size if total else 0
        size = ready * (chunk_size + TAG_LEN)
        if scratch:
            if len(self._scratch) < size:
                self._scratch = bytearray(size)
            out = self._scratch
        else:
            out = bytearray(size)
        out_view = memoryview(out)[:size]
        pos = 0
        for view in views:
            while view:
                if ready == 0:
                    pending += view
                    break
                if pending or len(view) < chunk_size:
                    take = chunk_size - len(pending)
                    pending += view[:take]
                    view = view[take:]
                    if len(pending) == chunk_size:
                        pos = self._seal_into(pending, False, out_view, pos)
                        pending.clear()
                        ready -= 1
                    continue
                pos = self._seal_into(view[:chunk_size], False, out_view, pos)
                view = view[chunk_size:]
                ready -= 1
        return out_view if scratch else out

    def finalize(self) -> bytes:
        """Seal the held-back bytes as the last chunk (an empty image: one empty chunk)."""
        if self._finalized:
            raise ValueError("finalize() called twice")
        self._finalized = True
        out = bytearray(len(self._pending) + TAG_LEN)
        self._seal_into(self._pending, True, memoryview(out), 0)
        self._pending = bytearray()
        return bytes(out)

    @property
    def plaintext_size(self) -> int:
        self._require_finalized()
        return self._size

    @property
    def sha256_hex(self) -> str:
        """SHA-256 of all plaintext fed in (the record's ``sha256``)."""
        self._require_finalized()
        if self._sha256 is None:
            raise ValueError("this sealer was made without a digest")
        return self._sha256.hexdigest()

    def _require_finalized(self) -> None:
        if not self._finalized:
            raise ValueError("the sealer has not been finalized")

    def _seal_into(self, plaintext, last: bool, out: memoryview, pos: int) -> int:
        # One nonce per (blob, index, role): chunk_nonce documents why each part is there.
        nonce = chunk_nonce(self._header.nonce_prefix, self._index, last)
        end = pos + len(plaintext) + TAG_LEN
        self._aead.encrypt_into(nonce, plaintext, self._header_bytes, out[pos:end])
        self._index += 1
        return end


class BlobOpener:
    """Authenticates and decrypts single chunks of one blob.

    The header is checked on construction: malformed, or naming a record other than
    ``record_id`` (a blob copied over from another record) -> ``BlobCorrupt``. The header is
    not yet authenticated then; it is by every chunk, since it is their AAD.
    """

    def __init__(self, blob_key: bytes, record_id: bytes, header_bytes: bytes) -> None:
        self._aead = _aead(blob_key)
        self._header_bytes = bytes(header_bytes)
        self.header = BlobHeader.decode(self._header_bytes)
        if self.header.record_id != bytes(record_id):
            raise BlobCorrupt()

    def open_chunk(self, index: int, ciphertext: bytes, last: bool) -> bytes:
        """Plaintext of chunk ``index``, which the caller says is (not) the last one.

        The chunk must decrypt under the nonce for exactly that position and role; anything
        else (a moved, dropped, duplicated, truncated or flipped chunk) is ``BlobCorrupt``.
        """
        nonce = self._check_chunk(index, ciphertext, last)
        try:
            return self._aead.decrypt(nonce, ciphertext, self._header_bytes)
        except InvalidTag as exc:
            raise BlobCorrupt() from exc

    def open_chunk_into(self, index: int, ciphertext: bytes, last: bool, out: memoryview) -> None:
        """``open_chunk`` writing the plaintext into ``out`` (exactly ``len(ciphertext) - 16``
        bytes). On ``BlobCorrupt`` ``out`` holds unauthenticated bytes: the caller must drop it."""
        nonce = self._check_chunk(index, ciphertext, last)
        try:
            self._aead.decrypt_into(nonce, ciphertext, self._header_bytes, out)
        except InvalidTag as exc:
            raise BlobCorrupt() from exc

    def _check_chunk(self, index: int, ciphertext: bytes, last: bool) -> bytes:
        """The chunk's nonce, after checking its length is possible for its position."""
        length = len(ciphertext)
        full = self.header.chunk_size + TAG_LEN
        if (
            length < TAG_LEN
            or length > full
            or (not last and length != full)
            # Only an empty image has an empty chunk, and then it is chunk 0.
            or (length == TAG_LEN and index != 0)
        ):
            raise BlobCorrupt()
        return chunk_nonce(self.header.nonce_prefix, index, last)


class PlaintextBuffers:
    """Buffers of one size (a full read batch of plaintext) for downloads, reused once released.

    A fresh ``bytearray`` per batch costs a zero-fill and often page faults (~50 µs per MiB,
    about as much as reading the MiB); a download reuses buffers instead. The rules that keep a
    reused buffer from ever showing one download's bytes to another:

    * every byte of a buffer handed out is overwritten (decrypted into) before it is yielded,
      and a buffer is only ever yielded whole: a batch of another size gets a fresh buffer;
    * a buffer comes back only through ``release``, which the consumer calls once nothing it
      gave the buffer to holds it (the HTTP handler: once the transport's write buffer is
      empty), and ``release`` refuses it while any view of it still exists (a transport that
      kept a ``memoryview``): resizing a ``bytearray`` with a live export raises ``BufferError``;
    * at most ``max_free`` buffers are kept; the rest are left to the garbage collector.

    Used from the event loop thread only.
    """

    def __init__(self, size: int, max_free: int = 16) -> None:
        self.size = size
        self._max_free = max_free
        self._free: list[bytearray] = []
        self.reused = 0  # buffers handed out again (tests, metrics)

    def take(self, size: int) -> bytearray:
        """A buffer of exactly ``size`` bytes whose contents the caller will overwrite entirely."""
        if size == self.size and self._free:
            self.reused += 1
            return self._free.pop()
        return bytearray(size)

    def release(self, buffer: object) -> bool:
        """Give ``buffer`` back for reuse; False (and nothing kept) unless it is a ``bytearray``
        of this pool's size that no one else holds a view of."""
        if type(buffer) is not bytearray or len(buffer) != self.size or len(self._free) >= self._max_free:
            return False
        try:
            last = buffer.pop()  # refused while a memoryview of it exists
        except BufferError:
            return False
        buffer.append(last)
        if any(free is buffer for free in self._free):
            return False
        self._free.append(buffer)
        return True


async def plaintext_size(
    backend: BlobBackend, blob_id: str, chunk_exp: int = DEFAULT_CHUNK_EXP
) -> int:
    """Plaintext size implied by the stored blob's length (``BlobCorrupt`` if impossible).

    Unauthenticated: it says what the blob would hold if intact; ``open_range`` checks it.
    """
    return plaintext_size_of(await backend.size(blob_id), chunk_exp)


async def open_range(
    backend: BlobBackend,
    blob_id: str,
    blob_key: bytes,
    record_id: bytes,
    start: int,
    end: int,
    *,
    batch_chunks: int = 16,
    expected_size: int | None = None,
    executor: Executor | None = None,
    buffers: PlaintextBuffers | None = None,
) -> AsyncIterator[bytes]:
    """Stream plaintext bytes [start, end) of a blob, reading only the chunks they touch.

    Reads the header, then one ``backend.read`` per batch of up to ``batch_chunks`` chunks.
    Each chunk is authenticated before any byte of it is yielded. The plaintext size is
    derived from the stored blob's length, and the chunk at the final position by that size is
    opened as the last chunk (and all others as not last), so a blob truncated or extended by
    whole chunks fails at the latest when its final chunk is read.

    ``expected_size`` (the record's size, if the caller knows it) makes a blob of any other
    length fail at once, before any byte is yielded, whichever range is asked for. A range
    ending past what the blob holds means the blob is shorter than its record: ``BlobCorrupt``.
    ``NotFound``/``StoreUnavailable`` from the backend propagate unchanged.

    ``executor`` given (the daemon's pool): a backend that can read from a thread reads each
    batch there, the next batch is fetched while the current one is being consumed, and each
    batch is authenticated and decrypted into one buffer and yielded as one piece (one socket
    write per batch instead of one per chunk: per-chunk bytes objects and writes once took
    ~60% of the event loop under 16 concurrent downloads). Either way no byte of a batch is
    yielded before every chunk in it has been authenticated.

    With the executor, a backend that reads into memory (``supports_read_into``) reads every
    batch of this stream into one ciphertext buffer (batches are fetched one after another, so
    one buffer serves them all); ``buffers`` supplies the plaintext buffers (see
    ``PlaintextBuffers`` for who may give them back).
    """
    if start < 0 or end < start:
        raise ValueError("invalid byte range")
    if batch_chunks < 1:
        raise ValueError("batch_chunks must be at least 1")
    loop = asyncio.get_running_loop()
    into = executor is not None and backend.supports_blocking_read and backend.supports_read_into
    if into:
        header_bytes, blob_size = await loop.run_in_executor(executor, backend.head_blocking, blob_id, HEADER_LEN)
    else:
        header_bytes = await backend.read(blob_id, 0, HEADER_LEN)
    if len(header_bytes) != HEADER_LEN:
        raise BlobCorrupt()
    opener = BlobOpener(blob_key, record_id, header_bytes)
    chunk_exp = opener.header.chunk_exp
    chunk_size = opener.header.chunk_size
    if not into:
        blob_size = await backend.size(blob_id)
    total = plaintext_size_of(blob_size, chunk_exp)
    if expected_size is not None and total != expected_size:
        raise BlobCorrupt()
    if end > total:
        raise BlobCorrupt()
    last_index = chunk_count(total, chunk_exp) - 1

    indexes = chunks_for_range(start, end, chunk_exp)
    if not indexes:
        if total == 0:
            # Nothing to serve, but an empty image is still verified: its one empty chunk.
            tag = await backend.read(blob_id, chunk_offset(0, chunk_exp), TAG_LEN)
            opener.open_chunk(0, tag, last=True)
        return

    batches = [(first, min(first + batch_chunks, indexes.stop))
               for first in range(indexes.start, indexes.stop, batch_chunks)]

    async def read_batch(first: int, stop: int) -> tuple[int, bytes]:
        """The stored bytes of chunks ``first``..``stop - 1`` and their offset in the blob."""
        offset = chunk_offset(first, chunk_exp)
        length = min(chunk_offset(stop, chunk_exp), blob_size) - offset
        if executor is not None and backend.supports_blocking_read:
            data = await loop.run_in_executor(executor, backend.read_blocking, blob_id, offset, length)
        else:
            data = await backend.read(blob_id, offset, length)
        if len(data) != length:
            raise BlobCorrupt()
        return offset, data

    if executor is not None:
        cipher = bytearray(0)

        async def read_batch_into(first: int, stop: int) -> tuple[int, memoryview]:
            nonlocal cipher
            offset = chunk_offset(first, chunk_exp)
            length = min(chunk_offset(stop, chunk_exp), blob_size) - offset
            if len(cipher) < length:
                cipher = bytearray(length)
            view = memoryview(cipher)[:length]
            got = await loop.run_in_executor(executor, backend.read_into_blocking, blob_id, offset, view)
            if got != length:
                raise BlobCorrupt()
            return offset, view

        async def fetch(first: int, stop: int) -> bytes | bytearray:
            offset, data = await (read_batch_into(first, stop) if into else read_batch(first, stop))
            # Decrypted here, on the event loop: ~0.15 ms per MiB. On a worker thread each chunk
            # decryption of a batch has to win the GIL back from the loop: measured with 64 KiB
            # chunks (16 per MiB), 16 concurrent downloads on 2 cores moved ~16% fewer bytes
            # per second that way.
            return _open_batch(opener, data, first, stop, offset, last_index, start, end, buffers)

        # One batch ahead: the next batch is read and decrypted while this one goes out on the
        # socket (the consumer awaits the socket's drain between pieces). Without it, each
        # download would alternate between waiting for the disk and crypto and waiting for the
        # client, and 16 concurrent downloads would leave a core idle.
        ahead: asyncio.Future[bytes | bytearray] | None = asyncio.ensure_future(fetch(*batches[0]))
        try:
            for number in range(len(batches)):
                assert ahead is not None
                piece = await ahead
                ahead = asyncio.ensure_future(fetch(*batches[number + 1])) if number + 1 < len(batches) else None
                yield piece
        finally:
            if ahead is not None:
                _abandon(ahead)
        return

    for first, stop in batches:
        offset, data = await read_batch(first, stop)
        length = len(data)
        view = memoryview(data)
        for index in range(first, stop):
            lo = chunk_offset(index, chunk_exp) - offset
            hi = min(lo + chunk_size + TAG_LEN, length)
            plaintext = opener.open_chunk(index, view[lo:hi], last=index == last_index)
            base = index * chunk_size
            cut_lo = max(start - base, 0)
            cut_hi = min(end - base, len(plaintext))
            if cut_lo == 0 and cut_hi == len(plaintext):
                yield plaintext
            else:
                yield plaintext[cut_lo:cut_hi]


def _abandon(future: asyncio.Future) -> None:
    """Cancel a prefetch nobody will await (the consumer stopped early or failed), and
    retrieve its outcome if it already has one, so no "exception never retrieved" is logged."""
    if future.done():
        if not future.cancelled():
            future.exception()
    else:
        future.cancel()


def _open_batch(
    opener: BlobOpener, data: bytes | memoryview, first: int, stop: int, offset: int, last_index: int, start: int,
    end: int, buffers: PlaintextBuffers | None = None,
) -> bytes | bytearray:
    """Plaintext bytes [start, end) held by chunks ``first``..``stop - 1`` (read from the blob
    at ``offset`` into ``data``), every one of them authenticated; decrypted in place into one
    buffer (no per-chunk bytes objects, no join). The buffer comes from ``buffers`` when given:
    it is overwritten whole (the chunks cover it without gaps) before it is returned."""
    chunk_exp = opener.header.chunk_exp
    chunk_size = opener.header.chunk_size
    base = first * chunk_size
    plain_len = max(len(data) - (stop - first) * TAG_LEN, 0)
    out = buffers.take(plain_len) if buffers is not None else bytearray(plain_len)
    out_view = memoryview(out)
    view = memoryview(data)
    for index in range(first, stop):
        lo = chunk_offset(index, chunk_exp) - offset
        hi = min(lo + chunk_size + TAG_LEN, len(data))
        at = index * chunk_size - base
        opener.open_chunk_into(index, view[lo:hi], index == last_index, out_view[at:at + hi - lo - TAG_LEN])
    cut_lo, cut_hi = max(start - base, 0), min(end - base, plain_len)
    if cut_lo == 0 and cut_hi == plain_len:
        return out
    return bytes(out_view[cut_lo:cut_hi])


def seal_bytes(
    dek: bytes, record_id: bytes, plaintext: bytes, *, header: BlobHeader | None = None
) -> bytes:
    """The whole sealed blob of ``plaintext`` under ``dek``. ``header`` pins the nonce prefix
    and chunk size (known-answer tests); by default a fresh random header is drawn."""
    return seal_under(derive_subkeys(dek, record_id).blob, record_id, plaintext, header=header)


def seal_under(
    blob_key: bytes, record_id: bytes, plaintext: bytes, *, header: BlobHeader | None = None
) -> bytes:
    """``seal_bytes`` under an already derived key (a rendition's: ``derive_rendition_key``)."""
    if header is None:
        header = BlobHeader.new(record_id)
    elif header.record_id != bytes(record_id):
        raise ValueError("header names a different record id")
    sealer = BlobSealer(blob_key, header)
    out = bytearray(sealed_size(len(plaintext), header.chunk_exp))
    body = sealer.update(plaintext)
    out[:HEADER_LEN] = sealer.header_bytes
    out[HEADER_LEN : HEADER_LEN + len(body)] = body
    out[HEADER_LEN + len(body) :] = sealer.finalize()
    return bytes(out)


def open_bytes(dek: bytes, record_id: bytes, blob: bytes) -> bytes:
    """Validate a whole blob and return its plaintext, or raise ``BlobCorrupt``."""
    return open_under(derive_subkeys(dek, record_id).blob, record_id, blob)


def open_under(subkey: bytes, record_id: bytes, blob: bytes) -> bytes:
    """``open_bytes`` under an already derived key."""
    if len(blob) < HEADER_LEN:
        raise BlobCorrupt()
    opener = BlobOpener(subkey, record_id, bytes(blob[:HEADER_LEN]))
    chunk_exp = opener.header.chunk_exp
    total = plaintext_size_of(len(blob), chunk_exp)
    count = chunk_count(total, chunk_exp)
    view = memoryview(blob)
    parts = []
    for index in range(count):
        lo = chunk_offset(index, chunk_exp)
        hi = min(chunk_offset(index + 1, chunk_exp), len(blob))
        parts.append(opener.open_chunk(index, view[lo:hi], last=index == count - 1))
    return b"".join(parts)
