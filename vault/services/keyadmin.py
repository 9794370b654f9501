"""Key administration: status, rotation, background rewrap, retirement, and the shred epoch.

``rotate`` asks the provider for a new KEK version and records a rewrap job in the ``jobs``
database. ``run`` walks the ``deks`` database in key order, rewraps every DEK (and every tenant
index key) still on an older version in provider batches, and stores each rewrapped key with a
compare-and-set: a record shredded, or re-uploaded, while its key was at the KMS keeps whatever
the index holds now. The cursor is saved with every batch, so a killed daemon resumes where it
stopped. Rewrap never reads or writes a blob.

``retire`` refuses while any wrapped key is older than the current version, raises the key
floor in the index (from then on no commit may carry an older wrap: see
``datakeys.check_key_floor``), rewraps what committed in between, then makes the old versions
unusable at the provider: from then on a wrapped DEK in an old backup, a free LMDB page or a
stolen copy is undecryptable, which is what turns deletion into shredding.

``epoch`` is the whole shred epoch as one resumable job (``jobs`` ``epoch``): rotate the KEK,
replace every tenant's blind-index key and move every live record's patient HMAC to the new
key, rewrap every live data key, retire the old KEK versions. After it, nothing an erased
record left behind in the index files (free pages included), in the audit trail or in older
snapshots can be opened or linked to a guessed patient id: its data key was wrapped only under
destroyed KEK versions, and its patient HMAC was keyed by an index key that itself was wrapped
only under them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from vault.errors import IndexTampered, InvalidRequest, KeyMaterialError, RewrapIncomplete
from vault.index import patient_ids, schema
from vault.index.engine import IndexTxn
from vault.keys.base import KeyStatus, key_version_of
from vault.metadata import format_timestamp, parse_timestamp
from vault.services.context import ServiceContext
from vault.services.datakeys import bump_key_generation
from vault.services.integrity import integrity_key_versions, rewrap_integrity_key
from vault.store.format import derive_metadata_key
from vault.store.personal import open_personal

log = logging.getLogger(__name__)
JOB_KEY = schema.JOB_REWRAP


@dataclass(frozen=True)
class RewrapState:
    state: str  # "idle" | "running" | "done"
    target_version: int
    cursor: str | None  # hex of the last record id handled
    rewrapped: int
    failed: int
    started_at: str | None
    finished_at: str | None

    @classmethod
    def idle(cls) -> RewrapState:
        return cls("idle", 0, None, 0, 0, None, None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


EPOCH_PHASES = ("tenant_keys", "rehmac", "rewrap", "retire")
MIN_ESCROW_PASSPHRASE = 12
# While uploads are in flight, background key work (rewrap, re-HMAC) waits this many times as
# long as each batch took (bench/epoch.py: uploads keep 0.99 of their throughput, and the
# epoch of 200,000 records takes ~7x as long as alone).
YIELD_FACTOR = 2.0


@dataclass(frozen=True)
class EpochState:
    state: str  # "idle" | "running" | "done"
    phase: str | None  # one of EPOCH_PHASES while running
    number: int  # epochs are numbered from 1
    target_version: int  # the KEK version every live key ends on
    started_at: str | None
    finished_at: str | None
    rehmac_groups: int = 0  # patients whose HMAC moved to the new index key
    failed: int = 0  # patients whose records could not be read to move their HMAC

    @classmethod
    def idle(cls) -> EpochState:
        return cls("idle", None, 0, 0, None, None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochStatus:
    """What ``keys status`` and ``/metrics`` say about erasure: the last completed epoch and
    how many shredded records still wait for the next one."""

    last_number: int
    last_completed_at: str | None
    waiting: int  # records shredded since the last epoch started
    due: bool
    running: EpochState
    last_backup_epoch: int | None  # the epoch of the newest snapshot (None: no backup yet)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "last_number": self.last_number, "last_completed_at": self.last_completed_at,
            "shredded_waiting": self.waiting, "due": self.due, "job": self.running.to_json(),
        }
        if self.last_number and (self.last_backup_epoch is None or self.last_backup_epoch < self.last_number):
            out["warning"] = ("no snapshot taken since the last shred epoch can be restored: "
                              "run `imagevault backup` now")
        return out


@dataclass(frozen=True)
class KeyReport:
    status: KeyStatus
    dek_counts: dict[int, int]  # KEK version -> wrapped DEKs (records) on it
    tenant_key_counts: dict[int, int]
    job: RewrapState
    epoch: EpochStatus | None = None
    integrity_key_version: int | None = None  # the index integrity key's KEK version

    def to_json(self) -> dict[str, Any]:
        out = {
            "provider": self.status.provider,
            "key_name": self.status.key_name,
            "current_version": self.status.current_version,
            "min_decryption_version": self.status.min_decryption_version,
            "versions": list(self.status.versions),
            "dek_counts": {str(k): v for k, v in sorted(self.dek_counts.items())},
            "tenant_key_counts": {str(k): v for k, v in sorted(self.tenant_key_counts.items())},
            "integrity_key_version": self.integrity_key_version,
            "rewrap": self.job.to_json(),
        }
        if self.epoch is not None:
            out["shred_epoch"] = self.epoch.to_json()
        return out


def _now() -> str:
    return format_timestamp(datetime.now(timezone.utc))


class KeyAdmin:
    def __init__(self, context: ServiceContext, busy: Callable[[], bool] = lambda: False) -> None:
        self._context = context
        self._busy = busy
        self._index = context.index
        self._keys = context.keys
        self._batch = context.config.rewrap_batch
        self._pause = context.config.rewrap_pause
        self._lock = asyncio.Lock()
        self._epoch_lock = asyncio.Lock()
        self.last_epoch_status: EpochStatus | None = None  # as last published (cheap to read)

    async def _yield_to_uploads(self, batch_started: float) -> None:
        """Background key work runs below uploads: while any upload is in flight, wait
        ``YIELD_FACTOR`` times as long as the batch took, so the work takes at most a third of
        the time it shares with uploads. The configured ``rewrap_pause`` applies on top."""
        if self._busy():
            await asyncio.sleep(YIELD_FACTOR * (time.perf_counter() - batch_started))
        if self._pause:
            await asyncio.sleep(self._pause)

    def _on_progress(self, done: int, total: int) -> None:
        self._context.metrics.rewrap_progress.set(1.0 if total == 0 else done / total)

    def publish_rewrap_metrics(self) -> None:
        """The persisted job's state, so a rewrap run by the command line (another process)
        shows in the daemon's metrics too."""
        state = self.job()
        running = state.state == "running"
        self._context.metrics.rewrap_running.set(1 if running else 0)
        self._context.metrics.rewrap_done.set(state.rewrapped if running else 0)

    def job(self) -> RewrapState:
        doc = self._index.read(lambda t: t.get_doc(schema.DB_JOBS, JOB_KEY))
        return RewrapState.idle() if doc is None else RewrapState(**doc)

    async def _save(self, state: RewrapState) -> None:
        await self._index.write(lambda t: t.put_doc(schema.DB_JOBS, JOB_KEY, state.to_json()))

    def counts(self) -> tuple[dict[int, int], dict[int, int]]:
        def scan(txn: IndexTxn) -> tuple[dict[int, int], dict[int, int]]:
            deks = Counter(key_version_of(w) for _, w in txn.iter_deks())
            tenants = Counter(key_version_of(doc["index_key"]) for _, doc in txn.iter_docs(schema.DB_TENANTS))
            return dict(deks), dict(tenants)

        return self._index.read(scan)

    async def report(self) -> KeyReport:
        status = await self._keys.status()
        deks, tenants = self.counts()
        integrity = self._index.read(integrity_key_versions)
        return KeyReport(status, deks, tenants, self.job(), self.epoch_status(), integrity[0] if integrity else None)

    async def rotate(self) -> RewrapState:
        """New KEK version; new uploads use it at once; old DEKs move over in ``run``."""
        version = await self._keys.rotate()
        state = RewrapState("running", version, None, 0, 0, _now(), None)
        await self._save(state)
        await self._set_versions(current=version)
        if self._context.dek_pool is not None:
            self._context.dek_pool.clear()  # pre-wrapped keys are on the old version
        self._context.metrics.rewrap_progress.set(0.0)
        log.info("key rotated to version %d; rewrap started", version)
        return state

    async def _set_versions(self, *, current: int | None = None, floor: int | None = None) -> None:
        """Record the KEK versions in the index, where every process serving it looks: the
        current one (a DEK pool holding older wraps empties itself) and the floor (below which
        no commit is accepted)."""

        def store(txn: IndexTxn) -> None:
            doc = txn.get_doc(schema.DB_META, schema.META_KEY_VERSIONS) or {}
            if current is not None:
                doc["current"] = max(current, doc.get("current", 0))
            if floor is not None:
                doc["floor"] = max(floor, doc.get("floor", 0))
            txn.put_doc(schema.DB_META, schema.META_KEY_VERSIONS, doc)
            bump_key_generation(txn, versions=True)  # every process's DEK pool and caches empty themselves

        await self._index.write(store)

    def remaining(self, target: int) -> int:
        deks, tenants = self.counts()
        integrity = self._index.read(integrity_key_versions)  # rewrapped, and waited for, with the tenant keys
        return sum(n for v, n in deks.items() if v < target) + sum(n for v, n in tenants.items() if v < target) \
            + sum(1 for v in integrity if v < target)

    async def run(self, progress: Callable[[int, int], None] | None = None) -> RewrapState:
        """Rewrap until no wrapped key is older than the job's target. Resumable; idempotent."""
        async with self._lock:
            state = self.job()
            if state.state != "running":
                return state
            target = state.target_version
            # Progress counts every key handled (data keys, tenant keys, the integrity key),
            # rewrapped or not (a record shredded meanwhile is handled too), against what was
            # left at the start plus what an interrupted run already did; the last call reports
            # the total as done.
            total = state.rewrapped + self.remaining(target)
            report = progress or self._on_progress
            handled = state.rewrapped + await self._rewrap_tenant_keys(target)
            cursor = bytes.fromhex(state.cursor) if state.cursor else None
            rewrapped, failed = state.rewrapped, state.failed
            while True:
                batch_started = time.perf_counter()

                def next_batch(txn: IndexTxn) -> list[tuple[bytes, str]]:
                    batch = []
                    for rid, wrapped in txn.iter_deks(cursor):
                        batch.append((rid, wrapped))
                        if len(batch) == self._batch:
                            break
                    return batch

                batch = self._index.read(next_batch)
                if not batch:
                    break
                cursor = batch[-1][0]
                stale = [(rid, w) for rid, w in batch if key_version_of(w) < target]
                if stale:
                    results = await self._keys.rewrap_data_keys([w for _, w in stale])
                    updates = []
                    for (rid, old), new in zip(stale, results):
                        if isinstance(new, KeyMaterialError):
                            failed += 1
                            log.error("rewrap failed for one record's data key (version %d)", key_version_of(old))
                        else:
                            updates.append((rid, old, new))

                    def store(txn: IndexTxn, updates=updates, cursor=cursor) -> int:
                        done = 0
                        for rid, old, new in updates:
                            if txn.get_dek(rid) == old:  # compare-and-set: shredded keys stay shredded
                                txn.put_dek(rid, new)
                                done += 1
                        current = txn.get_doc(schema.DB_JOBS, JOB_KEY) or {}
                        current.update(cursor=cursor.hex(), rewrapped=current.get("rewrapped", 0) + done)
                        txn.put_doc(schema.DB_JOBS, JOB_KEY, current)
                        return done

                    rewrapped += await self._index.write(store)
                    handled += len(stale)
                else:
                    await self._index.write(lambda t, c=cursor: _save_cursor(t, c))
                if report is not None:
                    report(min(handled, total), total)
                await self._yield_to_uploads(batch_started)
            if report is not None and not failed:
                report(total, total)
            final = RewrapState("done", target, None, rewrapped, failed, state.started_at, _now())
            if failed:
                final = RewrapState("running", target, None, rewrapped, failed, state.started_at, None)
            await self._save(final)
            log.info("rewrap to version %d finished: %d rewrapped, %d failed", target, rewrapped, failed)
            return final

    async def _rewrap_tenant_keys(self, target: int) -> int:
        """Rewrap the integrity key and every tenant's index key; returns how many keys were stale."""
        integrity_stale = sum(1 for v in self._index.read(integrity_key_versions) if v < target)
        await rewrap_integrity_key(self._index, self._keys, target)
        docs = self._index.read(lambda t: list(t.iter_docs(schema.DB_TENANTS)))
        stale = [(key, doc) for key, doc in docs if key_version_of(doc["index_key"]) < target]
        if not stale:
            return integrity_stale
        results = await self._keys.rewrap_data_keys([doc["index_key"] for _, doc in stale])

        def store(txn: IndexTxn) -> None:
            for (key, doc), new in zip(stale, results):
                if isinstance(new, KeyMaterialError):
                    continue
                current = txn.get_doc(schema.DB_TENANTS, key)
                if current is not None and current["index_key"] == doc["index_key"]:
                    txn.put_doc(schema.DB_TENANTS, key, {**current, "index_key": new})

        await self._index.write(store)
        return integrity_stale + len(stale)

    async def retire(self) -> KeyStatus:
        """Make every KEK version below the current one unusable; 409 while any key is older."""
        status = await self._keys.status()
        current = status.current_version
        if self.remaining(current):
            raise RewrapIncomplete()
        # The floor first: an upload that wrapped its DEK before the rotation and commits now
        # either landed already (counted below) or sees the floor and wraps again.
        await self._set_versions(current=current, floor=current)
        if self.remaining(current):
            state = self.job()
            await self._save(RewrapState("running", current, None, state.rewrapped, 0, state.started_at or _now(), None))
            await self.run()
            if self.remaining(current):
                raise RewrapIncomplete()
        await self._keys.retire(current)
        log.info("key versions below %d retired", current)
        return await self._keys.status()

    # the shred epoch ---------------------------------------------------------------------
    def epoch_job(self) -> EpochState:
        doc = self._index.read(lambda t: t.get_doc(schema.DB_JOBS, schema.JOB_EPOCH))
        return EpochState.idle() if doc is None else EpochState(**doc)

    async def _save_epoch(self, state: EpochState) -> None:
        await self._index.write(lambda t: t.put_doc(schema.DB_JOBS, schema.JOB_EPOCH, state.to_json()))

    def epoch_status(self) -> EpochStatus:
        def read(txn: IndexTxn) -> tuple[dict[str, Any] | None, dict[str, Any] | None, int]:
            last = txn.get_doc(schema.DB_META, schema.META_EPOCH)
            backup = txn.get_doc(schema.DB_META, schema.META_BACKUP)
            since = schema.encode_time(parse_timestamp(last["started_at"], "started_at")) if last else b""
            waiting = sum(1 for _ in txn.scan_keys(schema.DB_SHREDLOG, since, b"\xff" * (schema.SUFFIX_LEN + 1)))
            return last, backup, waiting

        last, backup, waiting = self._index.read(read)
        interval = self._context.config.shred_epoch_interval
        due = waiting > 0 and (
            last is None
            or (self._context.clock() - parse_timestamp(last["completed_at"], "completed_at")).total_seconds() >= interval
        )
        return EpochStatus(
            last["number"] if last else 0, last["completed_at"] if last else None, waiting, due,
            self.epoch_job(), backup.get("epoch", 0) if backup else None,
        )

    async def begin_epoch(self) -> EpochState:
        """Start a shred epoch (rotate the KEK, record the job) unless one is running; the
        state of the running or new epoch. ``epoch`` then takes it to the end."""
        async with self._epoch_lock:
            return await self._begin_epoch()

    async def _begin_epoch(self) -> EpochState:
        state = self.epoch_job()
        if state.state == "running":
            return state
        last = self._index.read(lambda t: t.get_doc(schema.DB_META, schema.META_EPOCH))
        rotation = await self.rotate()
        state = EpochState("running", EPOCH_PHASES[0], (last["number"] if last else 0) + 1,
                           rotation.target_version, rotation.started_at, None)
        await self._save_epoch(state)
        log.info("shred epoch %d started: KEK version %d", state.number, state.target_version)
        return state

    async def escrow(self, passphrase: str, **limits: int) -> bytes:
        """The key escrow of the local keyring (its live KEK versions under ``passphrase``),
        noted in the index with the epoch it was made in, which ``backup`` checks."""
        if len(passphrase) < MIN_ESCROW_PASSPHRASE:
            raise InvalidRequest(f"the escrow passphrase must be at least {MIN_ESCROW_PASSPHRASE} characters")
        data = await asyncio.to_thread(self._keys.export_escrow, passphrase, **limits)
        status = self.epoch_status()
        record = {"epoch": status.last_number, "created_at": _now()}
        await self._index.write(lambda t: t.put_doc(schema.DB_META, schema.META_ESCROW, record))
        return data

    @property
    def epoch_in_progress(self) -> bool:
        """Whether this process is running an epoch right now."""
        return self._epoch_lock.locked()

    def publish_epoch_metrics(self) -> EpochStatus:
        status = self.last_epoch_status = self.epoch_status()
        metrics = self._context.metrics
        metrics.epoch_last.set(status.last_number)
        if status.last_completed_at:
            metrics.epoch_last_completed.set(parse_timestamp(status.last_completed_at, "completed_at").timestamp())
        metrics.epoch_waiting.set(status.waiting)
        metrics.epoch_due.set(1 if status.due else 0)
        return status

    async def epoch(self, progress: Callable[[str, int, int], None] | None = None) -> EpochState:
        """Run (or resume) the shred epoch to the end; see the module docstring."""
        async with self._epoch_lock:
            state = await self._begin_epoch()
            if state.phase == "tenant_keys":
                await self._replace_tenant_keys()
                state = replace(state, phase="rehmac")
                await self._save_epoch(state)
            if state.phase == "rehmac":
                moved, failed = await self._move_patient_hmacs(progress)
                state = replace(state, phase="rewrap", rehmac_groups=state.rehmac_groups + moved, failed=failed)
                await self._save_epoch(state)
            if state.phase == "rewrap":
                rewrap = self.job()
                if rewrap.state != "running" or rewrap.target_version < state.target_version:
                    await self._save(RewrapState("running", state.target_version, None, 0, 0, _now(), None))
                final = await self.run(None if progress is None else lambda d, t: progress("rewrap", d, t))
                if final.failed:
                    raise RewrapIncomplete()
                state = replace(state, phase="retire")
                await self._save_epoch(state)
            if state.phase == "retire":
                await self.retire()
                finished = _now()
                state = replace(state, state="done", phase=None, finished_at=finished)
                record = {"number": state.number, "started_at": state.started_at, "completed_at": finished,
                          "key_version": state.target_version}

                def complete(txn: IndexTxn) -> None:
                    txn.put_doc(schema.DB_META, schema.META_EPOCH, record)
                    txn.put_doc(schema.DB_JOBS, schema.JOB_EPOCH, state.to_json())

                await self._index.write(complete)
                self._context.tenant_keys.clear()  # the replaced index keys leave memory too
                self.publish_epoch_metrics()
                log.info("shred epoch %d completed: KEK versions below %d destroyed", state.number, state.target_version)
            return state

    async def _replace_tenant_keys(self) -> None:
        """A fresh blind-index key per tenant, stored as ``next_index_key`` (writes use it from
        now on; reads look under both until the HMACs have moved). A tenant whose configured
        patient-id scheme differs from the one its index uses switches with it
        (``next_patient_id_scheme``), to ``exact`` or ``legacy``: those accept every stored id.
        A switch to ``nhs`` would have to refuse ids already stored, so it is reported, not made."""
        config = self._context.config
        wanted = patient_ids.settings(config.patient_id_scheme, config.patient_id_scheme_by_tenant)

        def read(txn: IndexTxn) -> tuple[list[tuple[bytes, dict[str, Any]]], dict[str, patient_ids.TenantScheme]]:
            return list(txn.iter_docs(schema.DB_TENANTS)), patient_ids.pending_switches(txn, wanted)

        docs, switches = self._index.read(read)
        pending = [(key, doc) for key, doc in docs if not doc.get("next_index_key")]
        if not pending:
            return
        targets: dict[bytes, str] = {}
        for tenant, found in switches.items():
            if found.configured == patient_ids.NHS:
                log.warning("tenant %s stays on patient-id scheme %s: a switch to nhs is not made by the shred "
                            "epoch (ids already stored may not be NHS numbers)", tenant, found.in_use)
            else:
                targets[tenant.encode()] = found.configured
        fresh = await self._keys.wrap_data_keys([secrets.token_bytes(32) for _ in pending])

        def store(txn: IndexTxn) -> None:
            for (key, doc), wrapped in zip(pending, fresh):
                current = txn.get_doc(schema.DB_TENANTS, key)
                if current is not None and current["index_key"] == doc["index_key"] and not current.get("next_index_key"):
                    extra = {"next_patient_id_scheme": targets[key]} if key in targets else {}
                    txn.put_doc(schema.DB_TENANTS, key, {**current, "next_index_key": wrapped, **extra})

        await self._index.write(store)

    async def _move_patient_hmacs(self, progress: Callable[[str, int, int], None] | None) -> tuple[int, int]:
        """Move every live record's patient HMAC to its tenant's new index key, then make the
        new key the tenant's only one. Resumable: a group already under the new key is left."""
        moved = failed = 0
        docs = self._index.read(lambda t: list(t.iter_docs(schema.DB_TENANTS)))
        for raw_tenant, doc in docs:
            if not doc.get("next_index_key"):
                continue
            tenant = raw_tenant.decode()
            old_key, new_key = (await self._keys.unwrap_data_keys([doc["index_key"], doc["next_index_key"]]))
            if isinstance(old_key, KeyMaterialError) or isinstance(new_key, KeyMaterialError):
                raise KeyMaterialError(f"the index keys of tenant {tenant} cannot be unwrapped")
            old_scheme = doc.get("patient_id_scheme") or patient_ids.LEGACY
            new_scheme = doc.get("next_patient_id_scheme") or old_scheme
            groups = self._index.read(lambda t, tenant=tenant: _patient_groups(t, tenant))
            names = list(groups)
            for start in range(0, len(names), self._batch):
                batch_started = time.perf_counter()
                batch = names[start:start + self._batch]
                mapping, lost = await self._new_hmacs(batch, groups, (old_key, old_scheme), (new_key, new_scheme))
                failed += lost
                if mapping:
                    await self._index.write(lambda t, tenant=tenant, mapping=mapping: _move_groups(t, tenant, mapping))
                    moved += len(mapping)
                if progress is not None:
                    progress("rehmac", start + len(batch), len(names))
                await self._yield_to_uploads(batch_started)
            expected = doc["next_index_key"]

            def swap(txn: IndexTxn, key: bytes = raw_tenant, expected: str = expected) -> None:
                current = txn.get_doc(schema.DB_TENANTS, key)
                if current is not None and current.get("next_index_key") == expected:
                    fields = {k: v for k, v in current.items() if k not in ("next_index_key", "next_patient_id_scheme")}
                    if current.get("next_patient_id_scheme"):
                        fields["patient_id_scheme"] = current["next_patient_id_scheme"]
                    txn.put_doc(schema.DB_TENANTS, key, {**fields, "index_key": expected, "replaced_at": _now()})

            await self._index.write(swap)
        return moved, failed

    async def _new_hmacs(
        self, batch: list[bytes], groups: dict[bytes, list[bytes]], old: tuple[bytes, str], new: tuple[bytes, str],
    ) -> tuple[dict[bytes, bytes], int]:
        """old HMAC -> new HMAC for the groups still under the old key, learnt by opening the
        personal fields of one record per group; and how many groups could not be read."""
        first = {h: groups[h][0] for h in batch}
        deks = await self._context.data_keys.unwrap(list(first.values()), cache=False)
        records = self._index.read(lambda t: {h: _record_unless_tampered(t, rid) for h, rid in first.items()})
        mapping: dict[bytes, bytes] = {}
        lost = 0
        for h, rid in first.items():
            record, dek = records[h], deks.get(rid)
            if record is None:
                continue  # shredded meanwhile: its group moves (if anything is left) on resume
            if record is TAMPERED_RECORD:
                lost += 1
                log.error("patient HMAC of record %s not moved: the record failed its integrity check", rid.hex())
                continue
            if dek is None:
                lost += 1
                log.error("patient HMAC of record %s not moved: its data key would not unwrap", rid.hex())
                continue
            patient_id = open_personal(derive_metadata_key(dek, rid), rid, record.sealed).get("patient_id") or ""
            try:
                under_old = patient_ids.patient_hmac(old[0], old[1], patient_id)
            except InvalidRequest:
                continue  # not an id of the old scheme, so not written under it: already moved
            if hmac.compare_digest(under_old, h):
                mapping[h] = patient_ids.patient_hmac(new[0], new[1], patient_id)
        return mapping, lost

TAMPERED_RECORD: Any = object()


def _record_unless_tampered(txn: IndexTxn, rid: bytes) -> Any:
    """The record, None if gone, or ``TAMPERED_RECORD`` if it failed its index MAC."""
    try:
        return txn.get_record(rid)
    except IndexTampered:
        return TAMPERED_RECORD


def _save_cursor(txn: IndexTxn, cursor: bytes) -> None:
    current = txn.get_doc(schema.DB_JOBS, JOB_KEY) or {}
    current["cursor"] = cursor.hex()
    txn.put_doc(schema.DB_JOBS, JOB_KEY, current)


def _patient_groups(txn: IndexTxn, tenant: str) -> dict[bytes, list[bytes]]:
    """The tenant's ``by_patient`` entries grouped by patient HMAC: HMAC -> record ids."""
    prefix = schema.tenant_prefix(tenant)
    groups: dict[bytes, list[bytes]] = {}
    # Past every key of the tenant: an HMAC may itself begin with 0xff bytes.
    stop = prefix + b"\xff" * (schema.HMAC_LEN + schema.SUFFIX_LEN + 1)
    for key in txn.scan_keys(schema.DB_BY_PATIENT, prefix, stop):
        groups.setdefault(key[len(prefix):len(prefix) + schema.HMAC_LEN], []).append(schema.record_id_of(key))
    return groups


def _move_groups(txn: IndexTxn, tenant: str, mapping: dict[bytes, bytes]) -> None:
    for old, new in mapping.items():
        txn.move_patient(tenant, old, new)
