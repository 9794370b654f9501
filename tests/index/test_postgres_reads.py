"""How the PostgreSQL engine reads: the round trips a timeline search costs (counted on the
wire), single-statement reads in autocommit, multi-statement reads on one snapshot, and lost
connections mid-read."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.conftest import make_config, open_vault
from tests.infra.bulk import fill_records, record_metadata
from tests.infra.roundtrips import RoundTripCounter
from vault.auth import Principal, Role
from vault.errors import IndexUnavailable
from vault.index import postgres as pg_engine
from vault.index import schema
from vault.search import SearchQuery

# A clinician's timeline search of one patient with the key-generation watch running (as in a
# daemon): the tenant document and scheme (one statement in autocommit: 1), the walk (one
# statement, inline: the patient's positions with each one's record, key and rendition state:
# 1), the audit entry (BEGIN + head lock + head read; the entry, its index entries and COMMIT:
# 2). It was 21 when every read was BEGIN, statements, COMMIT.
SEARCH_ROUND_TRIPS = 4
TENANT = "clinic-a"


async def search_round_trips(vault, proxy, patient: str) -> tuple[int, int]:
    clinician = Principal(TENANT, Role.CLINICIAN, "alice")
    counts = []
    found = 0
    for _ in range(5):
        await asyncio.sleep(0.05)  # the previous audit commit and any key-watch re-read are done
        before = proxy.turns
        page = await vault.search(clinician, SearchQuery(patient_id=patient, limit=50))
        counts.append(proxy.turns - before)
        found = len(page.items)
    # The least of five: a background read of the key watch (every few seconds) may land in one,
    # and on a loaded machine a pipelined send can reach the server in two pieces, which the
    # proxy sees as an extra turn (never as one fewer).
    return min(counts), found


async def test_a_timeline_search_costs_a_fixed_number_of_round_trips(tmp_path, postgres_dsn):
    proxy, dsn = RoundTripCounter.in_front_of(postgres_dsn)
    vault = await open_vault(make_config(tmp_path / "data", index_engine="postgres", postgres_dsn=dsn))
    try:
        vault.context.data_keys.watch()
        await fill_records(vault, 60, tenant=TENANT)
        patient = record_metadata(20)["patient_id"]
        await search_round_trips(vault, proxy, patient)  # warm: pool connections, cached keys
        turns, found = await search_round_trips(vault, proxy, patient)
        assert found == 20
        assert 2 <= turns <= SEARCH_ROUND_TRIPS
    finally:
        await vault.close()
        proxy.close()


# reads ------------------------------------------------------------------------------------------
@pytest.fixture
def index(postgres_dsn):
    pg_engine.migrate(postgres_dsn)
    engine = pg_engine.PgIndex(postgres_dsn)
    yield engine
    engine.close()


def bump_both(dsn: str) -> None:
    """Another session moves both values together, in one commit."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for key in (b"a", b"b"):
            conn.execute("UPDATE index_kv SET value = convert_to((convert_from(value, 'UTF8')::int + 1)::text, 'UTF8') "
                         "WHERE db = %s AND key = %s", (schema.DB_META.decode(), key))


def test_a_read_of_several_statements_sees_one_snapshot(index, postgres_dsn):
    index.write_sync(lambda t: [t.put_bytes(schema.DB_META, k, b"1") for k in (b"a", b"b")])
    runs = []

    def both(txn):
        first = txn.get_bytes(schema.DB_META, b"a")
        bump_both(postgres_dsn)  # commits between this read's two statements, every time it runs
        runs.append(first)
        return first, txn.get_bytes(schema.DB_META, b"b")

    first, second = index.read(both)
    assert first == second  # both from one snapshot, though another commit moved them in between
    assert len(runs) == 2  # begun as one statement, run again in a snapshot at the second

    async def off_loop():
        return await index.read_off_loop(both)

    first, second = asyncio.run(off_loop())
    assert first == second


def test_a_read_of_one_statement_is_one_round_trip_without_begin(postgres_dsn):
    pg_engine.migrate(postgres_dsn)
    proxy, dsn = RoundTripCounter.in_front_of(postgres_dsn)
    engine = pg_engine.PgIndex(dsn)
    try:
        engine.write_sync(lambda t: t.put_bytes(schema.DB_META, b"k", b"v"))
        engine.read(lambda t: t.get_bytes(schema.DB_META, b"k"))  # the pool's connection made
        before = proxy.turns
        assert engine.read(lambda t: t.get_bytes(schema.DB_META, b"k")) == b"v"
        assert proxy.turns - before == 1

        def prefetched(txn):
            txn.prefetch([(schema.DB_META, b"k"), (schema.DB_DEKS, b"k"), (schema.DB_META, b"missing")])
            return txn.get_bytes(schema.DB_META, b"k"), txn.get_bytes(schema.DB_DEKS, b"k"), \
                txn.get_bytes(schema.DB_META, b"missing")

        before = proxy.turns
        assert engine.read(prefetched) == (b"v", None, None)
        assert proxy.turns - before == 1

        def two(txn):
            return txn.get_bytes(schema.DB_META, b"k"), txn.get_bytes(schema.DB_META, b"missing")

        before = proxy.turns
        assert engine.read(two) == (b"v", None)
        # The first statement alone, then BEGIN + it, the second, COMMIT with the sync (a
        # pipelined send reaching the server in two pieces on a loaded machine adds a turn).
        assert 4 <= proxy.turns - before <= 5
    finally:
        engine.close()
        proxy.close()


def test_a_read_cannot_write_even_in_autocommit(index):
    def sneaky(txn):
        txn.put_bytes(schema.DB_META, b"sneaky", b"1")
        return txn.get_bytes(schema.DB_META, b"sneaky")

    with pytest.raises(IndexUnavailable):
        index.read(sneaky)
    assert index.read(lambda t: t.get_bytes(schema.DB_META, b"sneaky")) is None


def terminate_readers(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND application_name = %s AND pid <> pg_backend_pid()", (pg_engine.APPLICATION_NAME,))


@pytest.mark.parametrize("mode", ["single", "snapshot"])
def test_a_connection_lost_mid_read_is_retried_once_then_index_unavailable(index, postgres_dsn, mode):
    index.write_sync(lambda t: [t.put_bytes(schema.DB_META, k, b"1") for k in (b"a", b"b")])
    cuts = []

    def cut_every_time(txn):
        if mode == "single":
            terminate_readers(postgres_dsn)  # before the only statement
            cuts.append(1)
            return txn.get_bytes(schema.DB_META, b"a")
        first = txn.get_bytes(schema.DB_META, b"a")
        terminate_readers(postgres_dsn)  # between the statements of the snapshot
        cuts.append(1)
        return first, txn.get_bytes(schema.DB_META, b"b")

    async def off_loop(fn):
        return await index.read_off_loop(fn)

    with pytest.raises(IndexUnavailable) as raised:
        if mode == "single":
            index.read(cut_every_time)
        else:
            asyncio.run(off_loop(cut_every_time))
    assert raised.value.code == "index_unavailable" and raised.value.retry_after
    assert len(cuts) == 2  # once more on a fresh connection, then given up

    def cut_once(txn):
        if not cuts:
            terminate_readers(postgres_dsn)
            cuts.append(1)
        return txn.get_bytes(schema.DB_META, b"a"), txn.get_bytes(schema.DB_META, b"b")

    cuts.clear()
    assert index.read(cut_once) == (b"1", b"1")  # a dead pooled connection is replaced


# writes -----------------------------------------------------------------------------------------
def test_an_append_that_does_not_sort_last_fails_its_job_alone(index):
    db = schema.DB_META
    index.write_sync(lambda t: t.put_bytes(db, b"log-1", b"first", append=True))

    def duplicate(txn):
        txn.put_bytes(db, b"beside", b"x")
        txn.put_bytes(db, b"log-1", b"again", append=True)
        txn.put_bytes(db, b"after", b"y")
        return "done"

    with pytest.raises(ValueError):  # a batch of one: pipelined, the failure arrives at the sync
        index.write_sync(duplicate)
    # In a group commit with others (savepoints): it fails alone, the others commit.
    futures = [index.submit(lambda t, n=n: t.put_bytes(db, b"other-%d" % n, b"1")) for n in range(20)]
    futures.insert(10, index.submit(duplicate))
    for n, future in enumerate(futures):
        if n == 10:
            with pytest.raises(ValueError):
                future.result()
        else:
            future.result()
    assert index.read(lambda t: (t.get_bytes(db, b"log-1"), t.get_bytes(db, b"beside"), t.get_bytes(db, b"after"))) \
        == (b"first", None, None)
    assert index.read(lambda t: t.count(db)) >= 21
