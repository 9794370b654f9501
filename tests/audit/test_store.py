"""The audit chain: its encoding is what docs/format.md says, and any edit on disk is caught."""

from __future__ import annotations

import hashlib
import struct
from datetime import datetime, timezone

import lmdb
import pytest

from vault.audit.chain import (
    GENESIS,
    Actor,
    AuditEvent,
    MalformedEntry,
    decode_stored,
    encode_entry,
    entry_hash,
)
from vault.audit.query import AuditFilter
from vault.audit.store import DB_BY_RECORD, DB_ENTRIES, DB_HEAD, INDEXED_KEY, AuditLog

FIXED = datetime(2026, 11, 20, 10, 15, tzinfo=timezone.utc)
ACTOR = Actor("alice", "clinician", "clinic-a")
RID = bytes(range(16))


def event(n: int) -> AuditEvent:
    return AuditEvent("read", ACTOR, "clinic-a", (RID,), "ok", {"n": n, "marker": f"MARK{n:04d}"})


@pytest.fixture
def log(tmp_path):
    audit = AuditLog(tmp_path / "audit", lambda: FIXED, map_size=1 << 20)
    yield audit
    audit.close()


def test_entry_encoding_matches_the_documented_layout_byte_by_byte():
    encoded = encode_entry(1, FIXED, AuditEvent("erase", Actor("dpo1", "dpo", "t"), "t", (RID,), "ok", {"b": 1, "a": [2]}), GENESIS)
    micros = int((FIXED - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds()) * 1_000_000

    def s(text: str) -> bytes:
        return struct.pack(">I", len(text.encode())) + text.encode()

    expected = (
        b"IVA1" + struct.pack(">Q", 1) + struct.pack(">Q", micros + (1 << 63))
        + s("t") + s("dpo1") + s("dpo") + s("t") + s("erase")
        + struct.pack(">I", 1) + RID + s("ok") + s('{"a":[2],"b":1}') + bytes(32)
    )
    assert encoded == expected
    assert entry_hash(encoded) == hashlib.sha256(expected).digest()


def test_an_actor_acting_for_a_user_is_encoded_as_iva2_byte_by_byte():
    actor = Actor("photo-app", "clinician", "t", "token", "dr.jones")
    encoded = encode_entry(1, FIXED, AuditEvent("read", actor, "t", (), "ok", {}), GENESIS)
    micros = int(FIXED.timestamp()) * 1_000_000

    def s(text: str) -> bytes:
        return struct.pack(">I", len(text.encode())) + text.encode()

    expected = (
        b"IVA2" + struct.pack(">Q", 1) + struct.pack(">Q", micros + (1 << 63))
        + s("t") + s("photo-app") + s("clinician") + s("t") + s("token") + s("dr.jones") + s("read")
        + struct.pack(">I", 0) + s("ok") + s("{}") + bytes(32)
    )
    assert encoded == expected
    entry, raw = decode_stored(encoded + entry_hash(encoded))
    assert raw == encoded and entry.event.actor == actor


@pytest.mark.parametrize("actor", [Actor("sub-1", "dpo", "t", "oidc"), Actor("app", "dpo", "t", "oidc", "x")])
def test_extended_actors_round_trip(actor):
    encoded = encode_entry(3, FIXED, AuditEvent("read", actor, "t"), GENESIS)
    assert encoded.startswith(b"IVA2")
    assert decode_stored(encoded + entry_hash(encoded))[0].event.actor == actor


def test_a_plain_actor_keeps_the_iva1_encoding_and_iva2_may_not_restate_it():
    plain = encode_entry(1, FIXED, AuditEvent("read", Actor("a", "clinician", "t", "token", None), "t"), GENESIS)
    assert plain.startswith(b"IVA1")
    rid_pos = len(b"IVA1") + 16 + 4 + 1 + 4 + 1 + 4 + 9 + 4 + 1
    restated = b"IVA2" + plain[4:rid_pos] + struct.pack(">I", 5) + b"token" + struct.pack(">I", 0) + plain[rid_pos:]
    with pytest.raises(MalformedEntry, match="IVA1 encodes"):
        decode_stored(restated + entry_hash(restated))
    with pytest.raises(ValueError):
        encode_entry(1, FIXED, AuditEvent("read", Actor("a", "clinician", "t", "token", ""), "t"), GENESIS)


@pytest.mark.parametrize(("needle", "seq"), [(b"dr.jones", 2), (b"MARK0004", 4)])
async def test_a_chain_mixing_iva1_and_iva2_entries_verifies_and_an_edit_of_either_is_caught(tmp_path, needle, seq):
    path = tmp_path / "audit"
    log = AuditLog(path, lambda: FIXED, map_size=1 << 20)
    await log.append(event(1))
    await log.append(AuditEvent("read", Actor("app", "clinician", "clinic-a", "token", "dr.jones"), "clinic-a"))
    await log.append(AuditEvent("read", Actor("sub-9", "dpo", "clinic-a", "oidc"), "clinic-a"))
    await log.append(event(4))
    assert log.verify().ok and log.verify().entries == 4
    assert [e.event.actor.on_behalf_of for e in log.page(0, 10).entries] == [None, "dr.jones", None, None]
    log.close()
    _flip_on_disk(path, needle)
    log = AuditLog(path, lambda: FIXED, map_size=1 << 20)
    try:
        result = log.verify()
    finally:
        log.close()
    assert not result.ok and result.bad_seq == seq


def test_decoding_returns_the_exact_bytes_that_were_hashed():
    encoded = encode_entry(7, FIXED, event(7), b"\x01" * 32)
    entry, raw = decode_stored(encoded + entry_hash(encoded))
    assert raw == encoded and entry.seq == 7 and entry.event == event(7) and entry.time == FIXED
    with pytest.raises(MalformedEntry):
        decode_stored(encoded[:-1] + entry_hash(encoded))


async def test_appends_form_a_chain_from_the_genesis_value(log):
    first = await log.append(event(1))
    second = await log.append(event(2))
    assert first.seq == 1 and first.prev_hash == GENESIS
    assert second.seq == 2 and second.prev_hash == first.hash
    result = log.verify()
    assert result.ok and result.entries == 2 and result.head == second.hash.hex()


async def test_concurrent_appends_stay_one_linear_chain(log):
    import asyncio

    entries = await asyncio.gather(*(log.append(event(n)) for n in range(300)))
    assert sorted(e.seq for e in entries) == list(range(1, 301))
    assert log.verify().ok


def test_an_empty_trail_verifies(log):
    result = log.verify()
    assert result.ok and result.entries == 0 and result.head == GENESIS.hex()


def _fill(log, n: int = 20) -> None:
    for i in range(1, n + 1):
        log.append_sync(event(i))


def _flip_on_disk(path, needle: bytes) -> None:
    """Flip one byte of every copy of ``needle`` in the environment's data file."""
    data_file = path / "data.mdb"
    raw = bytearray(data_file.read_bytes())
    pos = raw.find(needle)
    assert pos >= 0
    while pos >= 0:
        raw[pos + len(needle) - 1] ^= 0x01
        pos = raw.find(needle, pos + 1)
    data_file.write_bytes(bytes(raw))


@pytest.mark.parametrize("seq", [1, 9, 20])
def test_editing_any_entry_on_disk_fails_verification_at_that_entry(tmp_path, seq):
    path = tmp_path / "audit"
    log = AuditLog(path, lambda: FIXED, map_size=1 << 20)
    _fill(log)
    log.close()
    _flip_on_disk(path, f"MARK{seq:04d}".encode())
    log = AuditLog(path, lambda: FIXED, map_size=1 << 20)
    try:
        result = log.verify()
    finally:
        log.close()
    assert not result.ok and result.bad_seq == seq and result.entries == seq - 1


@pytest.mark.parametrize("seq", [1, 9, 20])
def test_deleting_any_entry_on_disk_fails_verification_at_that_entry(tmp_path, seq):
    path = tmp_path / "audit"
    log = AuditLog(path, lambda: FIXED, map_size=1 << 20)
    _fill(log)
    log.close()
    env = lmdb.open(str(path), max_dbs=4, map_size=1 << 20)
    with env.begin(write=True, db=env.open_db(DB_ENTRIES)) as txn:
        assert txn.delete(struct.pack(">Q", seq))
    env.close()
    log = AuditLog(path, lambda: FIXED, map_size=1 << 20)
    try:
        result = log.verify()
    finally:
        log.close()
    assert not result.ok and result.bad_seq == seq


def test_an_entry_recomputed_after_an_edit_breaks_the_next_link(tmp_path):
    path = tmp_path / "audit"
    log = AuditLog(path, lambda: FIXED, map_size=1 << 20)
    _fill(log, 5)
    log.close()
    env = lmdb.open(str(path), max_dbs=4, map_size=1 << 20)
    db = env.open_db(DB_ENTRIES)
    with env.begin(write=True, db=db) as txn:
        entry, _ = decode_stored(bytes(txn.get(struct.pack(">Q", 3))))
        forged = encode_entry(3, entry.time, AuditEvent("read", ACTOR, "clinic-a", (), "ok", {}), entry.prev_hash)
        txn.put(struct.pack(">Q", 3), forged + entry_hash(forged))
    env.close()
    log = AuditLog(path, lambda: FIXED, map_size=1 << 20)
    try:
        result = log.verify()
    finally:
        log.close()
    assert not result.ok and result.bad_seq == 4 and "prev_hash" in (result.reason or "")


def test_paging_filters_by_scope_and_resumes_after_the_last_seen_seq(log):
    for n in range(10):
        scope = "clinic-a" if n % 2 else "clinic-b"
        log.append_sync(AuditEvent("read", ACTOR, scope, (), "ok", {}))
    page = log.page(0, 3, AuditFilter(scopes=frozenset({"clinic-a"})))
    assert [e.seq for e in page.entries] == [2, 4, 6] and page.next_after == 6
    page = log.page(page.next_after, 3, AuditFilter(scopes=frozenset({"clinic-a"})))
    assert [e.seq for e in page.entries] == [8, 10] and page.next_after is None


async def test_a_trail_from_before_the_record_index_is_indexed_on_first_use(tmp_path):
    other = bytes(16)
    path = tmp_path / "audit"
    log = AuditLog(path, lambda: FIXED, map_size=1 << 20)
    for n in range(5):
        log.append_sync(AuditEvent("read", ACTOR, "clinic-a", (RID,) if n % 2 else (other,), "ok", {}))
    log.close()
    env = lmdb.open(str(path), max_dbs=4, map_size=1 << 20)  # as a trail from before the index looks
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(DB_BY_RECORD, txn=txn), delete=True)
        txn.delete(INDEXED_KEY, db=env.open_db(DB_HEAD, txn=txn))
    env.close()
    log = AuditLog(path, lambda: FIXED, map_size=1 << 20)
    try:
        log.append_sync(event(6))  # appended while the index lags: left for the catch-up
        assert not log.record_index_complete()
        assert log.seqs_naming([RID], 100) == []
        assert await log.index_records() == 6 and log.record_index_complete()
        assert log.seqs_naming([RID], 100) == [2, 4, 6] and log.seqs_naming([RID], 5) == [2, 4]
        page = log.page(0, 2, AuditFilter(record_id=RID))
        assert [e.seq for e in page.entries] == [2, 4] and page.next_after == 4
        assert [e.seq for e in log.page(4, 2, AuditFilter(record_id=RID)).entries] == [6]
        log.append_sync(event(7))  # caught up: indexed as it is appended
        assert log.seqs_naming([RID], 100) == [2, 4, 6, 7] and log.verify().ok
    finally:
        log.close()


async def test_appends_queued_together_share_one_commit_and_each_is_committed_when_it_returns(log):
    """Group commit: appends waiting together share one durable LMDB commit (one pair of
    flushes), and an append returns only once its own entry is committed (readable, in order).
    The writer is held on a gate while the appends queue, so the grouping is deterministic."""
    import asyncio
    import threading

    entered, gate = threading.Event(), threading.Event()

    def hold(txn):  # runs on the writer thread: keeps it busy until the gate opens
        entered.set()
        gate.wait(10)

    held = log._index.submit(hold)
    assert entered.wait(10)
    commits = log._index.commits

    async def append_and_read_back(n: int) -> None:
        entry = await log.append(event(n))
        page = log.page(entry.seq - 1, 1)
        assert page.entries and page.entries[0].hash == entry.hash

    tasks = [asyncio.ensure_future(append_and_read_back(n)) for n in range(64)]
    await asyncio.sleep(0)  # every task has queued its append behind the held writer
    assert not any(task.done() for task in tasks)
    gate.set()
    await asyncio.gather(*tasks)
    held.result()
    assert log._index.commits - commits == 2  # the gate's own commit, then all 64 appends
    result = log.verify()
    assert result.ok and result.entries == 64
