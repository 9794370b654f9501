"""The BlobBackend interface: where sealed blobs (ciphertext only) are kept.

A backend stores opaque byte strings under a record id (the 26-character id string). It never
sees plaintext or keys. Writes are all-or-nothing: a ``BlobWriter`` collects bytes and
``commit()`` makes the blob durable and visible in one step (filesystem: fsync the temp file,
rename, fsync the directory; S3: complete the upload). ``abort()`` discards everything written.

Lifecycle: ``writer = await backend.open_writer(id)``; ``await writer.write(b)`` any number of
times; then exactly one of ``await writer.commit()`` / ``await writer.abort()``. A writer that
is neither committed nor aborted (crash) leaves only a temporary object that start-up recovery
or ``gc`` removes.

Errors raised: ``StoreUnavailable`` (backend unreachable), ``InsufficientStorage`` (disk or
quota full), ``NotFound`` (no blob under that id). Nothing else escapes.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator

from vault.errors import NotFound

# 26 Crockford base32 characters, upper case, as vault.ids.encode_id writes them; 128 bits fit
# in 130, so the first character is 0..7. Every backend validates ids with this before an id
# becomes part of a path or an object key (no traversal, no second spelling of one blob).
# A record's renditions are blobs of their own, named by the record id and a suffix
# (``RENDITION_SUFFIXES``): ``<ID>.t`` its thumbnail, ``<ID>.p`` its preview.
BLOB_ID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}(?:\.[tp])?")
RECORD_ID_CHARS = 26
RENDITION_SUFFIXES = {"thumbnail": ".t", "preview": ".p"}


def rendition_blob_id(record_id: str, kind: str) -> str:
    """The blob id of a record's rendition (``kind`` is ``thumbnail`` or ``preview``)."""
    return record_id + RENDITION_SUFFIXES[kind]


def record_of_blob(blob_id: str) -> str:
    """The record id a (valid) blob id belongs to: itself for an original, the stem for a rendition."""
    return blob_id[:RECORD_ID_CHARS]


def blob_names(record_id: str) -> list[str]:
    """Every blob a record may have: the original first, then its renditions."""
    return [record_id, *(record_id + suffix for suffix in RENDITION_SUFFIXES.values())]


def is_rendition(blob_id: str) -> bool:
    return len(blob_id) > RECORD_ID_CHARS


def check_blob_id(blob_id: str) -> str:
    """Return ``blob_id`` if it is a canonical record id; ``NotFound`` otherwise (no oracle)."""
    if not isinstance(blob_id, str) or BLOB_ID_RE.fullmatch(blob_id) is None:
        raise NotFound()
    return blob_id


class BlobWriter(abc.ABC):
    # True when ``write_blocking`` may be called from a worker thread instead of ``write``:
    # the upload path then seals and writes a batch in one thread job (one hop, not two).
    supports_blocking_write: bool = False

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    def write_blocking(self, data: bytes | bytearray | memoryview) -> None:
        """``write``, synchronously, from a worker thread. ``data`` is written (or copied) before
        this returns and not referred to afterwards: the caller reuses that memory for the next
        batch. No other method of the writer may run meanwhile."""
        raise NotImplementedError(f"{type(self).__name__} writes asynchronously only")

    @abc.abstractmethod
    async def commit(self) -> None:
        """Make the blob durable and visible. After this returns the blob survives a crash."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Discard the partial blob. Safe to call more than once and after a failed commit."""


class BlobBackend(abc.ABC):
    name: str = "abstract"
    # How many bytes one ``read`` should ask for when streaming a blob. A filesystem read is
    # cheap at any size; an object store pays a round trip per request, so it asks for more.
    read_batch_bytes: int = 1 << 20

    @abc.abstractmethod
    async def open_writer(self, blob_id: str) -> BlobWriter: ...

    # True when ``read_blocking`` may be called from a worker thread: the download path then
    # reads and decrypts a batch in one thread job.
    supports_blocking_read: bool = False

    @abc.abstractmethod
    async def read(self, blob_id: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes starting at ``offset`` (fewer only at the end of the blob)."""

    def read_blocking(self, blob_id: str, offset: int, length: int) -> bytes:
        """``read``, synchronously, from a worker thread (same result, same errors)."""
        raise NotImplementedError(f"{type(self).__name__} reads asynchronously only")

    # True when ``read_into_blocking`` reads straight into the caller's memory: the download
    # path then reuses one buffer for every batch instead of a new bytes object per batch.
    supports_read_into: bool = False

    def read_into_blocking(self, blob_id: str, offset: int, into: memoryview) -> int:
        """``read_blocking`` of ``len(into)`` bytes at ``offset`` into ``into``; how many were
        read (fewer only at the end of the blob). From a worker thread."""
        raise NotImplementedError(f"{type(self).__name__} does not read into buffers")

    def head_blocking(self, blob_id: str, length: int) -> tuple[bytes, int]:
        """The first ``length`` bytes of the blob and its size, in one blocking call (one
        thread hop per download instead of two); with ``supports_read_into``."""
        raise NotImplementedError(f"{type(self).__name__} does not read into buffers")

    @abc.abstractmethod
    async def size(self, blob_id: str) -> int: ...

    async def read_all(self, blob_id: str, piece_size: int = 4 << 20) -> AsyncIterator[bytes]:
        """The stored bytes of a whole blob, in pieces of up to ``piece_size`` (copies of the
        ciphertext: backup, quarantine). Ends early if the blob turns out shorter than its size."""
        size = await self.size(blob_id)
        offset = 0
        while offset < size:
            piece = await self.read(blob_id, offset, piece_size)
            if not piece:
                return
            offset += len(piece)
            yield piece

    @abc.abstractmethod
    async def delete(self, blob_id: str) -> bool:
        """Remove the blob; False if it was not there."""

    @abc.abstractmethod
    def list_ids(self) -> AsyncIterator[str]:
        """Every committed blob id (for gc, verify, backup)."""

    async def list_blobs(self) -> AsyncIterator[tuple[str, int]]:
        """Every committed blob with its size (backends override this with one listing call)."""
        async for blob_id in self.list_ids():
            try:
                yield blob_id, await self.size(blob_id)
            except NotFound:
                continue  # deleted while listing

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Raise StoreUnavailable/InsufficientStorage unless a blob could be written now."""

    async def cleanup_temporary(self) -> int:
        """Remove leftovers of interrupted writes; return how many were removed."""
        return 0

    async def close(self) -> None:
        """Release connections and file handles."""
