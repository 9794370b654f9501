"""Job leases on PostgreSQL advisory locks (``vault.index.postgres.PgJobLocks``) through the
``JobLeases`` API the supervisor uses: one leader per job across processes, a lost session
loses its leadership, and the key watch that follows shreds by LISTEN/NOTIFY."""

from __future__ import annotations

import threading
import time

import psycopg

from vault.index import postgres as pg_engine
from vault.services.leases import JobLeases


def test_one_session_leads_a_job_until_its_session_ends(tmp_path, postgres_dsn):
    first = JobLeases(tmp_path / "a", pg_engine.PgJobLocks(postgres_dsn))
    second = JobLeases(tmp_path / "b", pg_engine.PgJobLocks(postgres_dsn))
    try:
        assert first.across_hosts and first.try_lead("retention-sweep")
        assert first.try_lead("retention-sweep")  # kept, after checking the session is alive
        assert not second.try_lead("retention-sweep")
        assert second.try_lead("audit-witness")  # each job has its own leader
        assert not (tmp_path / "a").exists()  # no file locks: the database elects
        # The server ends the leader's session (as when its node vanishes and keepalives fire).
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            ended = conn.execute(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = 'advisory' "
                "AND l.objid = (%s::bigint & 4294967295)::oid AND l.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())",
                (pg_engine.job_lock_key("retention-sweep"),)).fetchall()
        assert len(ended) == 1
        assert second.try_lead("retention-sweep")  # the lock went with the session
        assert not first.try_lead("retention-sweep")  # and the old leader knows it lost it
        assert "retention-sweep" not in first.leading
        second.release_all()
        assert first.try_lead("retention-sweep")
    finally:
        first.release_all()
        second.release_all()


def test_the_key_watch_follows_a_committed_change_and_ignores_a_rolled_back_one(postgres_dsn):
    pg_engine.migrate(postgres_dsn)
    index = pg_engine.PgIndex(postgres_dsn)
    seen: list[int] = []
    changed = threading.Event()

    def on_change(generation: int) -> None:
        seen.append(generation)
        changed.set()

    def read() -> int:
        doc = index.read(lambda t: t.get_doc(b"meta", b"key_generation"))
        return 0 if doc is None else doc["n"]

    try:
        watch = index.watch_key_changes(read, on_change, initial=read())
        assert watch.generation == 0
        time.sleep(0.5)  # LISTEN in place

        class Abandon(Exception):
            pass

        def bump_then_fail(txn):  # type: ignore[no-untyped-def]
            txn.put_doc(b"meta", b"key_generation", {"n": 7})
            txn.notify_key_change(7)
            raise Abandon()

        try:
            index.write_sync(bump_then_fail)
        except Abandon:
            pass
        assert not changed.wait(1.0) and watch.generation == 0

        def bump(txn):  # type: ignore[no-untyped-def]
            txn.put_doc(b"meta", b"key_generation", {"n": 1})
            txn.notify_key_change(1)

        index.write_sync(bump)
        assert changed.wait(5.0)
        assert seen == [1] and watch.generation == 1
    finally:
        index.close()
