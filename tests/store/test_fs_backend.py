"""The filesystem blob backend against a real temporary directory."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest

from vault.errors import InsufficientStorage, NotFound, StoreUnavailable
from vault.ids import encode_id, new_record_id
from vault.store.backends import fs
from vault.store.backends.fs import WRITE_BATCH, FsBackend


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data" / "blobs"


@pytest.fixture
def backend(root: Path) -> FsBackend:
    return FsBackend(root)


def new_id() -> str:
    return encode_id(new_record_id())


def temp_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / "tmp"))


async def put(backend: FsBackend, blob_id: str, data: bytes) -> None:
    writer = await backend.open_writer(blob_id)
    await writer.write(data)
    await writer.commit()


async def all_ids(backend: FsBackend) -> list[str]:
    return [blob_id async for blob_id in backend.list_ids()]


def test_constructor_creates_root_and_tmp_but_no_shards(root):
    FsBackend(root)
    assert sorted(os.listdir(root)) == ["tmp"]
    assert FsBackend.name == "fs"


async def test_committed_blob_is_visible_at_its_sharded_path(backend, root):
    blob_id = new_id()
    data = os.urandom(3 * WRITE_BATCH + 12345)
    writer = await backend.open_writer(blob_id)
    for start in range(0, len(data), 100_001):
        await writer.write(data[start : start + 100_001])
    await writer.commit()
    path = root / blob_id[-2:].lower() / f"{blob_id}.ivb"
    assert backend.path_of(blob_id) == path
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await backend.size(blob_id) == len(data)
    assert await backend.read(blob_id, 0, len(data)) == data
    assert await backend.read(blob_id, 1000, 10) == data[1000:1010]
    assert temp_files(root) == []


async def test_writes_reach_the_file_in_batches_of_at_least_one_mib(backend, monkeypatch):
    sizes: list[int] = []
    real_write = os.write

    def recording_write(fd, data):
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(fs.os, "write", recording_write)
    writer = await backend.open_writer(new_id())
    for _ in range(40):
        await writer.write(bytes(65_552))
    await writer.commit()
    monkeypatch.undo()
    assert sum(sizes) == 40 * 65_552
    assert all(size >= WRITE_BATCH for size in sizes[:-1])
    assert len(sizes) <= 3


async def test_uncommitted_blob_is_invisible(backend, root):
    blob_id = new_id()
    writer = await backend.open_writer(blob_id)
    await writer.write(b"partial")
    with pytest.raises(NotFound):
        await backend.size(blob_id)
    assert await all_ids(backend) == []
    assert len(temp_files(root)) == 1
    assert temp_files(root)[0].startswith(f"{blob_id}.") and temp_files(root)[0].endswith(".tmp")
    await writer.abort()


async def test_abort_leaves_no_temporary_file_and_is_idempotent(backend, root):
    blob_id = new_id()
    writer = await backend.open_writer(blob_id)
    await writer.write(os.urandom(2 * WRITE_BATCH))
    await writer.abort()
    await writer.abort()
    assert temp_files(root) == []
    with pytest.raises(NotFound):
        await backend.size(blob_id)


async def test_abort_after_commit_keeps_the_blob(backend):
    blob_id = new_id()
    writer = await backend.open_writer(blob_id)
    await writer.write(b"kept")
    await writer.commit()
    await writer.abort()
    assert await backend.read(blob_id, 0, 100) == b"kept"


async def test_write_after_commit_is_a_value_error(backend):
    writer = await backend.open_writer(new_id())
    await writer.commit()
    with pytest.raises(ValueError):
        await writer.write(b"late")
    with pytest.raises(ValueError):
        await writer.commit()


async def test_empty_blob_commits(backend):
    blob_id = new_id()
    await put(backend, blob_id, b"")
    assert await backend.size(blob_id) == 0
    assert await backend.read(blob_id, 0, 10) == b""


async def test_commit_refuses_to_overwrite_an_existing_blob(backend, root):
    blob_id = new_id()
    await put(backend, blob_id, b"first")
    writer = await backend.open_writer(blob_id)
    await writer.write(b"second")
    with pytest.raises(ValueError):
        await writer.commit()
    await writer.abort()
    assert await backend.read(blob_id, 0, 100) == b"first"
    assert temp_files(root) == []


async def test_read_past_end_returns_short(backend):
    blob_id = new_id()
    await put(backend, blob_id, b"0123456789")
    assert await backend.read(blob_id, 7, 100) == b"789"
    assert await backend.read(blob_id, 10, 5) == b""
    assert await backend.read(blob_id, 50, 5) == b""
    assert await backend.read(blob_id, 3, 0) == b""


async def test_missing_blob_is_not_found(backend):
    blob_id = new_id()
    with pytest.raises(NotFound):
        await backend.read(blob_id, 0, 1)
    with pytest.raises(NotFound):
        await backend.size(blob_id)


async def test_delete_removes_the_blob_and_reports_absence(backend):
    blob_id = new_id()
    await put(backend, blob_id, b"x")
    assert await backend.delete(blob_id) is True
    assert await backend.delete(blob_id) is False
    with pytest.raises(NotFound):
        await backend.read(blob_id, 0, 1)
    assert await all_ids(backend) == []


async def test_list_ids_yields_committed_blobs_only(backend, root):
    committed = sorted(new_id() for _ in range(25))
    for blob_id in committed:
        await put(backend, blob_id, blob_id.encode())
    pending = await backend.open_writer(new_id())
    await pending.write(b"pending")
    shard = root / committed[0][-2:].lower()
    (shard / "notes.txt").write_text("not a blob")
    (shard / f"{committed[0]}.ivb.bak").write_bytes(b"")
    (shard / ("0" * 25 + "Z.ivb")).write_bytes(b"")  # valid id, but in the wrong shard
    (root / "lost+found").mkdir()
    (root / "zz").mkdir(exist_ok=True)
    (root / "zz" / "garbage.ivb").write_bytes(b"")
    assert sorted(await all_ids(backend)) == committed
    await pending.abort()


async def test_cleanup_temporary_removes_leftovers_but_not_live_writers(backend, root):
    (root / "tmp" / f"{new_id()}.deadbeef.tmp").write_bytes(b"crashed write")
    (root / "tmp" / "probe.0011.tmp").write_bytes(b"")
    live_id = new_id()
    live = await backend.open_writer(live_id)
    await live.write(b"still writing")
    assert await backend.cleanup_temporary() == 2
    assert len(temp_files(root)) == 1
    await live.commit()
    assert await backend.read(live_id, 0, 100) == b"still writing"
    assert await backend.cleanup_temporary() == 0


async def test_cleanup_temporary_is_seen_through_a_fresh_backend(root):
    first = FsBackend(root)
    crashed = await first.open_writer(new_id())
    await crashed.write(b"never committed")
    # A restarted daemon does not know the writer: its temp file is a leftover.
    assert await FsBackend(root).cleanup_temporary() == 1
    assert temp_files(root) == []


@pytest.mark.parametrize(
    "bad_id",
    [
        "../../../../etc/passwd",
        "..",
        "",
        "tmp",
        "0" * 25,
        "0" * 27,
        "01ARZ3NDEKTSV4RRFFQ69G5FA/",
        "01ARZ3NDEKTSV4RRFFQ69G5FA\n",
        "01arz3ndektsv4rrffq69g5fav",  # lower case: only the canonical form names a file
        "01ARZ3NDEKTSV4RRFFQ69G5FAU",  # U is not Crockford base32
        "01ARZ3NDEKTSV4RRFFQ69G5FAI",
        "81ARZ3NDEKTSV4RRFFQ69G5FAV",  # more than 128 bits
        "01ARZ3NDEKTSV4RRFFQ69G/../",
        "/1ARZ3NDEKTSV4RRFFQ69G5FAV",
    ],
)
async def test_invalid_ids_are_not_found_before_touching_the_filesystem(backend, root, bad_id):
    before = sorted(str(p) for p in root.rglob("*"))
    with pytest.raises(NotFound):
        await backend.open_writer(bad_id)
    with pytest.raises(NotFound):
        await backend.read(bad_id, 0, 10)
    with pytest.raises(NotFound):
        await backend.size(bad_id)
    with pytest.raises(NotFound):
        await backend.delete(bad_id)
    assert sorted(str(p) for p in root.rglob("*")) == before


@pytest.mark.parametrize(
    "code, expected",
    [
        (errno.ENOSPC, InsufficientStorage),
        (errno.EDQUOT, InsufficientStorage),
        (errno.EIO, StoreUnavailable),
    ],
)
async def test_write_errors_are_mapped_and_leave_no_temporary(
    backend, root, monkeypatch, code, expected
):
    def failing_write(fd, data):
        raise OSError(code, os.strerror(code))

    blob_id = new_id()
    writer = await backend.open_writer(blob_id)
    monkeypatch.setattr(fs.os, "write", failing_write)
    with pytest.raises(expected) as info:
        await writer.write(bytes(WRITE_BATCH))
        await writer.commit()
    monkeypatch.undo()
    assert isinstance(info.value.__cause__, OSError)
    await writer.abort()
    assert temp_files(root) == []
    with pytest.raises(NotFound):
        await backend.size(blob_id)


async def test_commit_failure_cleans_up_its_temporary(backend, root, monkeypatch):
    def failing_write(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = await backend.open_writer(new_id())
    await writer.write(b"small, still buffered")
    monkeypatch.setattr(fs.os, "write", failing_write)
    with pytest.raises(InsufficientStorage):
        await writer.commit()
    monkeypatch.undo()
    assert temp_files(root) == []


async def test_check_writable_succeeds_and_leaves_nothing(backend, root):
    await backend.check_writable()
    assert temp_files(root) == []


async def test_check_writable_reports_a_vanished_store_as_unavailable(backend, root):
    shutil.rmtree(root)
    with pytest.raises(StoreUnavailable):
        await backend.check_writable()


async def test_open_writer_on_a_vanished_store_is_unavailable(backend, root):
    shutil.rmtree(root)
    with pytest.raises(StoreUnavailable):
        await backend.open_writer(new_id())
