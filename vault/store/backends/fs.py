"""The embedded filesystem backend: one file per sealed blob under ``data_dir/blobs``.

Layout (``docs/format.md`` "Filesystem layout")::

    root/<shard>/<ID>.ivb         committed blob; shard = last two id characters, lower case
    root/<shard>/<ID>.t.ivb       the record's thumbnail (``.p.ivb`` its preview), same shard
    root/tmp/<ID>.<hex>.tmp       a write in progress (or the leftover of a crash)

The shard is taken from the *end* of the id: the first characters encode the creation time and
would pile every new blob into one directory, the last ones are random and spread blobs evenly
over 1024 directories.

Durability of a commit, in this order: write the temp file, ``fsync`` it, close it, create the
shard directory if needed (and ``fsync`` the root so the new directory survives), ``rename`` the
temp file into place, ``fsync`` the shard directory so the new name survives. Only then is the
write acknowledged. A crash at any earlier point leaves at most a temp file, removed by
``cleanup_temporary`` at start-up. An ``fsync`` failure is never retried: after a failed fsync
the kernel may have dropped the dirty pages, so a second fsync can "succeed" over lost data.

Every blocking call runs in the loop's default executor. ``OSError`` is translated here and
nowhere else: ENOSPC/EDQUOT -> ``InsufficientStorage``, a missing blob -> ``NotFound``, anything
else -> ``StoreUnavailable``. Blob ids are validated before any path is built (no traversal).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from vault.errors import InsufficientStorage, NotFound, StoreUnavailable
from vault.files import PRIVATE_DIR, fsync_dir, make_private_dir, open_private
from vault.store.backends.base import BLOB_ID_RE as _ID_RE
from vault.store.backends.base import BlobBackend, BlobWriter, record_of_blob
from vault.store.backends.base import check_blob_id as _check_id

_T = TypeVar("_T")

_SHARD_RE = re.compile(r"[0-9a-hjkmnp-tv-z]{2}")
_SUFFIX = ".ivb"
_TMP_DIR = "tmp"
WRITE_BATCH = 1 << 20  # issue writes to the file in batches of at least 1 MiB
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _open_for_reading(path: Path) -> int:
    """A read-only descriptor of a blob file; ``NotFound`` when there is none."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound() from None


def _store_error(exc: OSError) -> Exception:
    if exc.errno in _FULL_ERRNOS:
        return InsufficientStorage()
    return StoreUnavailable()


async def _run(func: Callable[..., _T], *args: object) -> _T:
    """Run a blocking call in the default executor, translating OSError."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, func, *args)
    except OSError as exc:
        raise _store_error(exc) from exc


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FsWriter(BlobWriter):
    """A blob being written to ``root/tmp``; see the module docstring for commit ordering."""

    supports_blocking_write = True

    def __init__(self, backend: FsBackend, blob_id: str, tmp_path: Path, fd: int) -> None:
        self._backend = backend
        self._blob_id = blob_id
        self._tmp_path = tmp_path
        self._fd: int | None = fd
        self._buffer = bytearray()
        self._done = False

    async def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError("write() after commit() or abort()")
        if not self._buffer and len(data) >= WRITE_BATCH and isinstance(data, bytes):
            # Already a full batch (the service seals ~1 MiB at a time): write it as it is
            # instead of copying it into the buffer first (that copy showed up at ~9% of the
            # event loop under load). Only immutable bytes: the executor thread reads them
            # while the caller goes on.
            await _run(_write_all, self._fd, data)
            return
        self._buffer += data
        if len(self._buffer) >= WRITE_BATCH:
            await self._flush()

    def write_blocking(self, data: bytes | bytearray | memoryview) -> None:
        if self._done or self._fd is None:
            raise ValueError("write() after commit() or abort()")
        try:
            if self._buffer:
                batch, self._buffer = self._buffer, bytearray()
                _write_all(self._fd, batch)
            _write_all(self._fd, data)
        except OSError as exc:
            raise _store_error(exc) from exc

    async def _flush(self) -> None:
        if not self._buffer:
            return
        # Hand the filled buffer to the executor and start a new one: the executor thread
        # must never see a buffer the event loop is still appending to.
        batch, self._buffer = self._buffer, bytearray()
        await _run(_write_all, self._fd, batch)

    async def commit(self) -> None:
        if self._done:
            raise ValueError("commit() after commit() or abort()")
        try:
            # The last bytes (the final chunk) and the install in one executor job, not two.
            batch, self._buffer = self._buffer, bytearray()
            fd, self._fd = self._fd, None
            await _run(self._backend._write_and_install, fd, batch, self._tmp_path, self._blob_id)
        except BaseException:
            await self.abort()
            raise
        self._done = True
        self._backend._active.discard(self._tmp_path)

    async def abort(self) -> None:
        self._done = True
        self._buffer = bytearray()
        fd, self._fd = self._fd, None
        await _run(_discard, fd, self._tmp_path)
        self._backend._active.discard(self._tmp_path)


def _discard(fd: int | None, tmp_path: Path) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.unlink(tmp_path)
    except FileNotFoundError:
        pass


class FsBackend(BlobBackend):
    name = "fs"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / _TMP_DIR
        try:
            make_private_dir(self.tmp_dir)
        except OSError as exc:
            raise _store_error(exc) from exc
        # Temp files of writers still open in this process: cleanup_temporary leaves them be.
        self._active: set[Path] = set()

    def path_of(self, blob_id: str) -> Path:
        """Where a committed blob lives (the id is validated first: ``NotFound`` if invalid)."""
        _check_id(blob_id)
        return self.root / record_of_blob(blob_id)[-2:].lower() / f"{blob_id}{_SUFFIX}"

    async def open_writer(self, blob_id: str) -> FsWriter:
        _check_id(blob_id)
        tmp_path = self.tmp_dir / f"{blob_id}.{secrets.token_hex(8)}.tmp"
        fd = await _run(self._create_temp, tmp_path)
        self._active.add(tmp_path)
        return FsWriter(self, blob_id, tmp_path, fd)

    def _ensure_tmp_dir(self) -> None:
        # Not the root: a store that vanished must fail, not be recreated empty.
        try:
            os.mkdir(self.tmp_dir, PRIVATE_DIR)
        except FileExistsError:
            pass

    def _create_temp(self, tmp_path: Path) -> int:
        self._ensure_tmp_dir()
        return open_private(tmp_path)

    def _write_and_install(self, fd: int, batch: bytearray, tmp_path: Path, blob_id: str) -> None:
        try:
            if batch:
                _write_all(fd, batch)
        except BaseException:
            os.close(fd)
            raise
        self._install(fd, tmp_path, blob_id)

    def _install(self, fd: int, tmp_path: Path, blob_id: str) -> None:
        """fsync + close the temp file, rename it into place, fsync the shard directory."""
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        target = self.path_of(blob_id)
        shard = target.parent
        try:
            os.mkdir(shard, PRIVATE_DIR)
        except FileExistsError:
            pass
        else:
            fsync_dir(self.root)  # the new shard directory itself must survive a crash
        if os.path.lexists(target):
            # Blobs are immutable and ids unique: an existing blob means a caller bug.
            raise ValueError("a blob with this id already exists")
        os.replace(tmp_path, target)
        try:
            fsync_dir(shard)
        except OSError:
            # Visible but perhaps not durable: the write is failed, so take the name back
            # (best effort; gc removes it otherwise, as no record points at it).
            try:
                os.unlink(target)
            except OSError:
                pass
            raise

    async def read(self, blob_id: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        return await _run(self._read, self.path_of(blob_id), offset, length)

    supports_blocking_read = True

    def read_blocking(self, blob_id: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        try:
            return self._read(self.path_of(blob_id), offset, length)
        except OSError as exc:
            raise _store_error(exc) from exc

    supports_read_into = True

    def read_into_blocking(self, blob_id: str, offset: int, into: memoryview) -> int:
        if offset < 0:
            raise ValueError("offset must not be negative")
        path = self.path_of(blob_id)
        try:
            fd = _open_for_reading(path)
            try:
                done = 0
                while done < len(into):
                    got = os.preadv(fd, [into[done:]], offset + done)
                    if not got:
                        break
                    done += got
                return done
            finally:
                os.close(fd)
        except OSError as exc:
            raise _store_error(exc) from exc

    def head_blocking(self, blob_id: str, length: int) -> tuple[bytes, int]:
        path = self.path_of(blob_id)
        try:
            fd = _open_for_reading(path)
            try:
                return os.pread(fd, length, 0), os.fstat(fd).st_size
            finally:
                os.close(fd)
        except OSError as exc:
            raise _store_error(exc) from exc

    @staticmethod
    def _read(path: Path, offset: int, length: int) -> bytes:
        fd = _open_for_reading(path)
        try:
            parts = []
            while length > 0:
                piece = os.pread(fd, length, offset)
                if not piece:
                    break
                parts.append(piece)
                offset += len(piece)
                length -= len(piece)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    async def size(self, blob_id: str) -> int:
        return await _run(self._size, self.path_of(blob_id))

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            raise NotFound() from None

    async def delete(self, blob_id: str) -> bool:
        return await _run(self._delete, self.path_of(blob_id))

    @staticmethod
    def _delete(path: Path) -> bool:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)  # make the removal durable: a shredded blob stays gone
        return True

    async def list_ids(self) -> AsyncIterator[str]:
        for shard in await _run(self._shards):
            for blob_id in await _run(self._ids_in, shard):
                yield blob_id

    def _shards(self) -> list[Path]:
        with os.scandir(self.root) as entries:
            return sorted(
                Path(entry.path)
                for entry in entries
                if _SHARD_RE.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)
            )

    @staticmethod
    def _ids_in(shard: Path) -> list[str]:
        ids = []
        try:
            with os.scandir(shard) as entries:
                for entry in entries:
                    stem, suffix = entry.name[: -len(_SUFFIX)], entry.name[-len(_SUFFIX) :]
                    if (
                        suffix == _SUFFIX
                        and _ID_RE.fullmatch(stem)
                        and record_of_blob(stem)[-2:].lower() == shard.name
                        and entry.is_file(follow_symlinks=False)
                    ):
                        ids.append(stem)
        except FileNotFoundError:  # removed between listing the root and now
            return []
        return sorted(ids)

    async def check_writable(self) -> None:
        await _run(self._probe)

    def _probe(self) -> None:
        self._ensure_tmp_dir()
        path = self.tmp_dir / f"probe.{secrets.token_hex(8)}.tmp"
        fd = open_private(path)
        try:
            _write_all(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    async def cleanup_temporary(self) -> int:
        """Remove leftovers of interrupted writes from ``root/tmp``.

        Meant for start-up and ``gc``; temp files of writers open in this process are kept.
        """
        return await _run(self._cleanup, frozenset(self._active))

    def _cleanup(self, keep: frozenset[Path]) -> int:
        removed = 0
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            path = Path(entry.path)
            if path in keep or entry.is_dir(follow_symlinks=False):
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed += 1
        return removed
