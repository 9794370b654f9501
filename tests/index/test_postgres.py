"""The PostgreSQL index engine on a real PostgreSQL: the same answers as LMDB, versioned schema
migrations, no lost update between two daemons, one audit chain across them, nothing personal in
what PostgreSQL logs or dumps, and recovery after the database comes back."""

from __future__ import annotations

import asyncio
import random

import psycopg
import pytest

from tests.api.test_privacy import needles, run_scenario
from tests.conftest import (
    PATIENT_IDS,
    Api,
    make_config,
    open_vault,
    random_image,
    sample_metadata,
)
from vault.api.app import create_app
from vault.auth import Principal, Role
from vault.errors import IndexUnavailable
from vault.index import postgres as pg_engine
from vault.index import schema
from vault.index.lmdb import Index
from vault.metadata import parse_metadata

CLINICIAN = Principal("clinic-a", Role.CLINICIAN, "alice")


def pg_config(tmp_path, dsn, **overrides):
    return make_config(tmp_path / "data", index_engine="postgres", postgres_dsn=dsn, **overrides)


async def body_of(data: bytes):
    yield data


# the engine against LMDB ---------------------------------------------------------------------
def test_the_engine_answers_as_lmdb_does_put_delete_scan_and_seek(tmp_path, postgres_dsn):
    pg_engine.migrate(postgres_dsn)
    pg = pg_engine.PgIndex(postgres_dsn)
    lm = Index(tmp_path / "lmdb", map_size=1 << 24)
    rng = random.Random(7)
    db = schema.DB_BY_FACET
    try:
        keys = sorted({bytes([1]) + rng.randbytes(rng.choice((1, 2, 3))) for _ in range(900)})
        for engine in (pg, lm):
            engine.write_sync(lambda t: [t.put_marker(db, k) for k in keys])
        gone = keys[::7]
        for engine in (pg, lm):
            engine.write_sync(lambda t: [t.delete_key(db, k) for k in gone])
            engine.write_sync(lambda t: t.put_bytes(schema.DB_META, b"x", b"\x00\xffvalue"))
        targets = sorted(rng.randbytes(rng.choice((0, 1, 2, 3))) for _ in range(300))

        def walk(txn):
            cursor = txn.prefix_cursor(db, b"\x01", b"\xff\xff\xff\xff")
            return [cursor.seek(t) for t in targets], cursor.landed

        def everything(txn):
            return (list(txn.scan_keys(db, b"\x01", b"\x02")), list(txn.scan_items(db, b"\x01\x80")), txn.count(db),
                    txn.get_bytes(schema.DB_META, b"x"), list(txn.scan_keys(db, b"\x01\x10", b"\x01\x20")))

        assert pg.read(walk) == lm.read(walk)
        assert pg.read(everything) == lm.read(everything)
        assert pg.read(lambda t: t.count(db)) == len(keys) - len(gone) > 2 * pg_engine.SCAN_BATCH
    finally:
        pg.close()
        lm.close()


def test_a_failing_write_is_rolled_back_alone_in_its_group_commit(postgres_dsn):
    pg_engine.migrate(postgres_dsn)
    index = pg_engine.PgIndex(postgres_dsn)

    def fails(txn):
        txn.put_bytes(schema.DB_META, b"bad", b"1")
        raise ValueError("no")

    try:
        futures = [index.submit(lambda t, n=n: t.put_bytes(schema.DB_META, b"ok%d" % n, b"1")) for n in range(20)]
        futures.insert(10, index.submit(fails))
        with pytest.raises(ValueError):
            futures[10].result()
        assert all(f.result() is None for i, f in enumerate(futures) if i != 10)
        assert index.read(lambda t: t.get_bytes(schema.DB_META, b"bad")) is None
        assert index.read(lambda t: sum(1 for _ in t.scan_keys(schema.DB_META, b"ok", b"ol"))) == 20
    finally:
        index.close()


# migrations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("start", range(pg_engine.LATEST_VERSION))
def test_upgrade_from_every_earlier_version(postgres, start):
    dsn = postgres.new_database()
    assert pg_engine.migrate(dsn, target=start) == (0, start)
    if start >= 1:
        with psycopg.connect(dsn, autocommit=True) as conn:
            # As version 1 held them: index rows, and the audit trail's under "audit/<name>".
            conn.execute("INSERT INTO index_kv VALUES ('meta', 'schema', '{\"version\":2}'), ('records', '\\x01', '\\x02')")
            conn.execute("INSERT INTO index_kv VALUES ('audit/entries', '\\x0000000000000001', '\\xab'), "
                         "('audit/head', 'head', '\\xcd')")
    if start:
        with pytest.raises(IndexUnavailable, match="imagevault index upgrade"):
            pg_engine.PgIndex(dsn)
    assert pg_engine.migrate(dsn) == (start, pg_engine.LATEST_VERSION)
    assert pg_engine.migrate(dsn) == (pg_engine.LATEST_VERSION, pg_engine.LATEST_VERSION)  # idempotent
    index = pg_engine.PgIndex(dsn)
    audit = pg_engine.PgIndex(dsn, table=pg_engine.AUDIT_TABLE, databases=(b"entries", b"head", b"by_record"), serialise=False)
    try:
        if start >= 1:
            assert index.read(lambda t: t.get_bytes(schema.DB_RECORDS, b"\x01")) == b"\x02"
            assert audit.read(lambda t: list(t.scan_items(b"entries", b""))) == [((1).to_bytes(8, "big"), b"\xab")]
            assert audit.read(lambda t: t.get_bytes(b"head", b"head")) == b"\xcd"
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT count(*) FROM index_kv WHERE db LIKE 'audit/%'").fetchone()[0] == 0
        assert index.read(lambda t: t.get_doc(schema.DB_META, schema.META_SCHEMA)) == {"version": schema.SCHEMA_VERSION}
    finally:
        index.close()
        audit.close()
        postgres.drop_database(dsn)



# two daemons on one database -----------------------------------------------------------------
async def test_two_daemons_patching_one_record_lose_no_update(tmp_path, postgres_dsn):
    config = pg_config(tmp_path, postgres_dsn)
    first = await open_vault(config)
    second = await open_vault(config)
    try:
        record = await first.create_image(CLINICIAN, parse_metadata(sample_metadata()), "image/jpeg",
                                          body_of(random_image(2000)))
        rounds = 12

        async def patch(vault, field, label):
            for n in range(rounds):
                await vault.update_metadata(CLINICIAN, record.id, {field: f"{label}-{n}"})

        # Both rewrite the whole record: a lost update would leave one field behind.
        await asyncio.gather(patch(first, "lesion_id", "A"), patch(second, "session_id", "B"))
        for vault in (first, second):
            final = await vault.get_record(CLINICIAN, record.id)
            assert (final.metadata.lesion_id, final.metadata.session_id) == (f"A-{rounds - 1}", f"B-{rounds - 1}")
        # Statistics are read-modify-write of one row from both daemons at once.
        await asyncio.gather(*(
            vault.create_image(CLINICIAN, parse_metadata(sample_metadata()), "image/jpeg", body_of(random_image(1000, n)))
            for n in range(10) for vault in (first, second)
        ))
        stats = first.index.read(lambda t: t.get_doc(schema.DB_META, schema.stats_key("clinic-a")))
        assert stats["records"] == 21
        # One chain across both: every append of both daemons in it, verifying.
        result = await first.verify_audit(Principal("-", Role.ADMIN, "op"))
        assert result.ok, result
        # (the verification is audited too: its own entry follows the ones it verified)
        assert result.entries + 1 == first.audit.head()[0] == second.audit.head()[0]
        assert result.entries >= 1 + 2 * rounds + 20
    finally:
        await first.close()
        await second.close()


# privacy -------------------------------------------------------------------------------------
async def test_nothing_personal_in_what_postgresql_logs_or_dumps(aiohttp_client, tmp_path, postgres):
    dsn = postgres.new_database(log_statement="all", log_parameter_max_length="-1",
                                log_min_error_statement="info")
    config = pg_config(tmp_path, dsn)
    log_before = len(postgres.log_text())
    vault = await open_vault(config)
    try:
        api = Api(await aiohttp_client(create_app(config, vault=vault)), vault, {})
        await run_scenario(api)
        erase = await api.client.post("/v1/patients/erase", json={"patient_id": PATIENT_IDS[1], "reason": "Art. 17",
                                                                  "override_retention": True},
                                      headers=await api.headers("dpo"))
        assert erase.status in (200, 202), await erase.text()
    finally:
        await vault.close()
    logged = postgres.log_text()[log_before:]
    dumped = postgres.pg_dump(dsn)
    assert b"INSERT INTO index_kv" in logged and b"parameters:" in logged  # statements and parameters were logged
    assert b"COPY public.index_kv" in dumped and b"COPY public.audit_kv" in dumped
    found = []
    for needle in needles():
        for name, text in (("log", logged), ("dump", dumped)):
            # bytea travels and is printed as hex: look for both spellings.
            for spelling in (needle, needle.hex().encode()):
                if spelling in text.lower() if spelling != needle else spelling in text:
                    found.append((name, needle))
    assert found == []
    postgres.drop_database(dsn)


# a lost database ------------------------------------------------------------------------------
async def test_a_lost_database_is_503_index_unavailable_and_the_daemon_recovers(aiohttp_client, tmp_path,
                                                                                 private_postgres):
    dsn = private_postgres.new_database()
    config = pg_config(tmp_path, dsn, postgres_connect_timeout=2.0)
    vault = await open_vault(config)
    try:
        api = Api(await aiohttp_client(create_app(config, vault=vault)), vault, {})
        record = await api.upload(random_image(3000), sample_metadata())
        headers = await api.headers()
        assert (await api.client.get(f"/v1/images/{record['id']}", headers=headers)).status == 200

        private_postgres.stop()
        for request in (api.client.get(f"/v1/images/{record['id']}/metadata", headers=headers),
                        api.client.post("/v1/search", json={"patient_id": PATIENT_IDS[0]}, headers=headers)):
            response = await request
            body = await response.json()
            assert response.status == 503, body
            assert body["error"]["code"] == "index_unavailable", body
            assert int(response.headers["Retry-After"]) > 0
        upload = await api.upload(random_image(3000, 1), sample_metadata(), expect=None)
        assert upload[0] == 503 and upload[1]["error"]["code"] == "index_unavailable", upload
        await asyncio.sleep(0.3)  # a readiness probe runs meanwhile (readiness_interval 0.1 s)
        ready = await api.client.get("/readyz")
        ready_body = await ready.json()
        assert ready.status == 503 and ready_body["checks"]["index"] != "ok", ready_body

        private_postgres.start()
        private_postgres.wait_ready()
        for _ in range(100):
            response = await api.client.get(f"/v1/images/{record['id']}/metadata", headers=headers)
            if response.status == 200:
                break
            await asyncio.sleep(0.1)
        assert response.status == 200
        assert (await api.upload(random_image(3000, 2), sample_metadata()))["id"]
        for _ in range(100):
            ready = await api.client.get("/readyz")
            if ready.status == 200:
                break
            await asyncio.sleep(0.1)
        body = await ready.json()
        assert ready.status == 200 and body["checks"]["index"] == "ok" and body["index_engine"] == "postgres", body
    finally:
        await vault.close()
