"""``imagevault index copy --to lmdb|postgres``: move the index and the audit trail between engines.

Everything is copied as stored bytes, database by database in key order: records with their
seals, wrapped keys, blind and facet indexes, tokens, jobs, statistics, upload states,
idempotency outcomes, and the audit chain with its hashes (so it verifies on the other side
exactly as it did, and nothing is re-sealed: no key is needed). Then the copy is verified: per
database the number of keys and a SHA-256 over every ``len(key) || key || len(value) || value``
in order, on both sides, and the copied audit chain walked from its first entry.

Only once all of that holds is the data directory switched to the new engine (its identity,
``vault.datadir``): the daemon started afterwards with ``index_engine`` set to the target opens
the copy. The source stays as it was, for a copy back. An LMDB target is written into new
directories beside the live ones and swapped in at the end (the old ones kept, renamed); a
PostgreSQL target must be an empty database (its migrations are applied first).

The copy refuses to run while a daemon serves the source: it takes the data directory's daemon
lock for its whole length, and on a PostgreSQL source it also refuses while another imagevault
process is connected to the database (other hosts hold no local lock).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from vault import components, datadir
from vault.audit.store import AUDIT_DBS
from vault.config import Config, ConfigError
from vault.errors import IndexUnavailable
from vault.index import schema
from vault.index.engine import IndexEngine, IndexTxn
from vault.services.context import lock_data_dir

BATCH = 5000
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class DatabaseCopy:
    name: str
    keys: int
    sha256: str


@dataclass(frozen=True)
class CopyReport:
    source: str
    target: str
    index: list[DatabaseCopy] = field(default_factory=list)
    audit: list[DatabaseCopy] = field(default_factory=list)
    audit_entries: int = 0
    audit_head: str | None = None
    kept: list[str] = field(default_factory=list)  # LMDB directories moved aside

    @property
    def keys(self) -> int:
        return sum(d.keys for d in self.index) + sum(d.keys for d in self.audit)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "target": self.target, "keys": self.keys,
            "index": [d.__dict__ for d in self.index], "audit": [d.__dict__ for d in self.audit],
            "audit_entries": self.audit_entries, "audit_head": self.audit_head, "kept": self.kept,
        }


def _batch(engine: IndexEngine, db: bytes, start: bytes) -> list[tuple[bytes, bytes]]:
    def take(txn: IndexTxn) -> list[tuple[bytes, bytes]]:
        out = []
        for item in txn.scan_items(db, start):
            out.append(item)
            if len(out) == BATCH:
                break
        return out

    return engine.read(take)


def digest(engine: IndexEngine, db: bytes) -> DatabaseCopy:
    """The number of keys in ``db`` and the SHA-256 over its pairs in key order."""
    hasher = hashlib.sha256()
    count = 0
    start = b""
    while True:
        items = _batch(engine, db, start)
        for key, value in items:
            hasher.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(8, "big") + value)
        count += len(items)
        if len(items) < BATCH:
            return DatabaseCopy(db.decode(), count, hasher.hexdigest())
        start = items[-1][0] + b"\x00"


def _copy_database(source: IndexEngine, target: IndexEngine, db: bytes, done: list[int], total: int,
                   progress: Progress | None) -> None:
    start = b""
    while True:
        items = _batch(source, db, start)
        if items:
            def put(txn: IndexTxn, items: list[tuple[bytes, bytes]] = items) -> None:
                for key, value in items:
                    txn.put_bytes(db, key, value)

            target.write_sync(put)
            done[0] += len(items)
            if progress is not None:
                progress(done[0], total)
        if len(items) < BATCH:
            return
        start = items[-1][0] + b"\x00"


def _holds_no_data(engine: IndexEngine) -> bool:
    """Nothing but the schema marker an index writes when it is opened."""
    def check(txn: IndexTxn) -> bool:
        total = sum(txn.count(db) for db in engine.databases())
        if schema.DB_META in engine.databases() and txn.get_doc(schema.DB_META, schema.META_SCHEMA) is not None:
            total -= 1
        return total == 0

    return engine.read(check)


def _copy_and_verify(source: IndexEngine, target: IndexEngine, done: list[int], total: int,
                     progress: Progress | None) -> list[DatabaseCopy]:
    for db in source.databases():
        _copy_database(source, target, db, done, total, progress)
    wanted = [digest(source, db) for db in source.databases()]
    got = [digest(target, db) for db in source.databases()]
    for have, copied in zip(wanted, got):
        if have != copied:
            raise IndexUnavailable(f"index copy does not match its source in database {have.name} "
                                   f"({have.keys} keys, copy {copied.keys}); the data directory is unchanged")
    return wanted


def copy_index(config: Config, to: str, *, progress: Progress | None = None) -> CopyReport:
    """Copy the index and the audit trail of ``config``'s engine to engine ``to`` (see the module)."""
    if to not in ("lmdb", "postgres"):
        raise ConfigError("--to must be lmdb or postgres")
    if to == config.index_engine:
        raise ConfigError(f"the data directory's index is already on {to}")
    target_config = replace(config, index_engine=to)
    if to == "postgres" and not config.postgres_dsn:
        raise ConfigError("copying to postgres needs IMAGEVAULT_POSTGRES_DSN (or IMAGEVAULT_POSTGRES_DSN_FILE)")
    recorded = datadir.check(config)
    lock = lock_data_dir(config)  # refuses while a daemon serves this data directory
    try:
        return _copy_locked(config, target_config, recorded, progress)
    finally:
        os.close(lock)


def _copy_locked(config: Config, target_config: Config, recorded: Any, progress: Progress | None) -> CopyReport:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    staging = target_config
    if target_config.index_engine == "lmdb":
        # Built beside the live directories, swapped in once verified.
        staging = replace(target_config, data_dir=config.data_dir / f"copy-{stamp}")
        staging.data_dir.mkdir(mode=0o700)
    else:
        from vault.index import postgres

        postgres.migrate(target_config.postgres_dsn or "", timeout=config.postgres_connect_timeout)
    if config.index_engine == "postgres":
        from vault.index import postgres

        if postgres.other_sessions(config.postgres_dsn or "", timeout=config.postgres_connect_timeout):
            raise IndexUnavailable("another imagevault process is connected to the source index database; "
                                   "stop every daemon first", retry_after=60)
    source = components.open_index(config, readonly=True)
    source_audit = components.open_audit(config, _now, readonly=True)
    target = target_audit = None
    try:
        target = components.open_index(staging)
        target_audit = components.open_audit(staging, _now)
        for engine, what in ((target, "index"), (target_audit.index, "audit trail")):
            if not _holds_no_data(engine):
                raise IndexUnavailable(f"the target {what} is not empty; nothing was copied", retry_after=60)
        total = sum(source.read(lambda t: [t.count(db) for db in source.databases()])) + \
            sum(source_audit.index.read(lambda t: [t.count(db) for db in AUDIT_DBS]))
        done = [0]
        index = _copy_and_verify(source, target, done, total, progress)
        audit = _copy_and_verify(source_audit.index, target_audit.index, done, total, progress)
        chain = target_audit.verify()
        if not chain.ok:
            raise IndexUnavailable(f"the copied audit chain does not verify at entry {chain.bad_seq}: {chain.reason}")
        source_chain_head = source_audit.head()
        if chain.entries != source_chain_head[0]:
            raise IndexUnavailable("the copied audit chain is not as long as its source")
    finally:
        for closable in (target, target_audit, source, source_audit):
            if closable is not None:
                closable.close()
    kept: list[str] = []
    if target_config.index_engine == "lmdb":
        for live, copied in ((config.index_dir, staging.index_dir), (config.audit_dir, staging.audit_dir)):
            if live.exists():
                aside = live.with_name(f"{live.name}.before-copy-{stamp}")
                live.rename(aside)
                kept.append(str(aside))
            copied.rename(live)
        shutil.rmtree(staging.data_dir, ignore_errors=True)
    identity = recorded if recorded is not None else datadir.of_config(config)
    datadir.write(target_config, replace(identity, index_engine=target_config.index_engine))
    return CopyReport(config.index_engine, target_config.index_engine, index, audit, chain.entries,
                      chain.head, kept)


def _now() -> datetime:
    return datetime.now(timezone.utc)

