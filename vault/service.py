"""The facade: the one entry point that the HTTP layer, the CLI, the tests and the benchmarks call.

``Vault`` composes the per-concern services in ``vault/services/`` over one shared
``ServiceContext`` and exposes every operation as one method. Each method that acts for a caller
takes the caller's ``Principal`` first and is wrapped by ``@audited``: the role's permission for
the operation is checked and the outcome is appended to the audit trail there, once, the same
way for every operation. Rules that depend on what is asked (rectifying a patient id, overriding
retention, a researcher's view) live in the service that knows them.

Create with ``await Vault.open(config)``; ``await close()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from vault.audit.chain import GLOBAL_SCOPE, AuditAction
from vault.audit.hooks import append_event, audited, note, search_filters
from vault.audit.query import AuditFilter
from vault.audit.store import AuditLog, AuditPage, VerifyResult
from vault.auth import ADMIN_TENANT, Action, Principal, Role, TokenInfo, check_user_name, looks_like_jwt
from vault.config import Config
from vault.errors import Forbidden, ImageVaultError, IndexTampered, Unauthorized, Unavailable
from vault.export import PatientExport
from vault.identity.oidc import OidcVerifier
from vault.ids import decode_id
from vault.index import schema
from vault.index.engine import IndexEngine
from vault.keys.base import KeyProvider
from vault.keys.cache import DekCache
from vault.metadata import Metadata, Record
from vault.metrics import Metrics
from vault.patients import AccessReportRequest, ErasureRequest, ExportRequest, HoldRequest
from vault.search import SearchQuery
from vault.services.access import AccessReport, AccessReports
from vault.services.backups import DEFAULT_KEEP, Backups, BackupReport, RestoreReport
from vault.services.context import Clock, ServiceContext, open_context, utc_now
from vault.services.idempotency import PURGE_INTERVAL, IdempotencyOutcomes
from vault.services.integrity import open_seal
from vault.services.leases import JobLeases
from vault.services.keyadmin import EpochState, KeyAdmin, KeyReport, RewrapState
from vault.services.looplag import SAMPLE_INTERVAL, LoopLagProbe
from vault.services.maintenance import GC_MIN_AGE, GcResult, Maintenance, Readiness, RecoveryReport, ScrubReport
from vault.services.patients import ErasureReport, HoldReport, PatientService
from vault.services.reading import ImageHandle, RecordReader
from vault.services.records import CommitHook, RecordService, ShredResult
from vault.services.renditions import BackfillReport, RenditionHandle, RenditionService, RenditionState
from vault.services.search import SearchPage, SearchService
from vault.services.shredding import Shredder
from vault.services.supervisor import Supervisor
from vault.services.sweeper import SCHEDULED_SWEEPER, RetentionSweeper, SweepReport
from vault.services.tokens import Revocation, TokenService, token_scope
from vault.services.uploads import Chunk, UploadRequest, UploadService, UploadStatus
from vault.store.backends.base import BlobBackend

log = logging.getLogger(__name__)
audit_log = logging.getLogger("vault.audit")
# How often the daemon looks whether a shred epoch is due (at most; the interval may be shorter).
EPOCH_CHECK_SECONDS = 300.0
# The daemon's own epochs act as this principal (no token: it is the daemon itself).
SCHEDULED_EPOCH = Principal(ADMIN_TENANT, Role.ADMIN, "shred-epoch")
INDEX_KEEPER = Principal(ADMIN_TENANT, Role.ADMIN, "index-integrity")  # the actor of the seal's own entries
# The daemon's purge of expired resumable uploads acts as this principal (no token).
UPLOAD_PURGER = Principal(ADMIN_TENANT, Role.ADMIN, "upload-purge")
# At most this many seconds between purges of expired resumable uploads.
UPLOAD_PURGE_SECONDS = 300.0
Progress = Callable[[int, int], None]

__all__ = ["Vault", "ImageHandle", "SearchPage", "ShredResult", "GcResult", "Readiness", "GC_MIN_AGE"]


class Vault:
    """imagevault's operations over one data directory (index, keys, blob store, audit trail)."""

    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        reader = RecordReader(context)
        self.download_buffers = reader.buffers  # plaintext buffers downloads reuse (tests, metrics)
        shredder = Shredder(context)
        self.idempotency = IdempotencyOutcomes(context)
        self.records = RecordService(context, reader, shredder, self.idempotency)
        self.uploads = UploadService(context, self.records.admit, self.complete_upload)
        self.searcher = SearchService(context, reader)
        self.patients = PatientService(context, reader, shredder, self.idempotency)
        self.access = AccessReports(context, self.patients)
        self.sweeper = RetentionSweeper(context, shredder)
        self.key_admin = KeyAdmin(context, busy=lambda: self.records.uploads_in_flight > 0)
        self.renditions = RenditionService(context, reader, busy=lambda: self.records.uploads_in_flight > 0)
        self.maintenance = Maintenance(context)
        self.backups = Backups(context)
        self.tokens = TokenService(context.index, context.clock)
        self.identity = OidcVerifier(context.config) if context.config.oidc_issuer else None
        self.supervisor = Supervisor(JobLeases(context.config.run_dir / "jobs", context.index.job_locks()))
        self.loop_lag = LoopLagProbe(context.metrics.loop_lag.observe)
        if context.metrics.worker_files is not None:
            context.metrics.before_render.append(self._refresh_shared_gauges)
        self.recovery: RecoveryReport | None = None
        self._witnessing = False
        self._last_head: tuple[int, bytes] | None = None
        self._closed = False
        self._readiness: Readiness | None = None

    # the shared parts, for callers that inspect them (tests, benchmarks) ---------------------
    @property
    def config(self) -> Config:
        return self.context.config

    @property
    def index(self) -> IndexEngine:
        return self.context.index

    @property
    def keys(self) -> KeyProvider:
        return self.context.keys

    @property
    def backend(self) -> BlobBackend:
        return self.context.backend

    @property
    def audit(self) -> AuditLog:
        return self.context.audit

    @property
    def metrics(self) -> Metrics:
        return self.context.metrics

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.context.clock

    @property
    def dek_cache(self) -> DekCache:
        return self.context.dek_cache

    # lifecycle -----------------------------------------------------------------------------
    @classmethod
    async def open(
        cls, config: Config, *, keys: KeyProvider | None = None, backend: BlobBackend | None = None,
        clock: Clock = utc_now, daemon: bool = False, lock: bool | None = None, recover: bool | None = None,
    ) -> Vault:
        """Open the service. ``daemon=True`` takes the data directory's exclusive lock and runs
        start-up recovery (``Maintenance.recover``). A worker of ``serve --workers`` passes
        ``lock=False`` (its parent holds the lock) and ``recover`` only for the first worker
        of a start: a worker started later must not take the others' uploads in flight for
        leftovers of a crash."""
        lock = daemon if lock is None else lock
        recover = daemon if recover is None else recover
        vault = cls(await open_context(config, keys=keys, backend=backend, clock=clock, lock=lock))
        try:
            if await open_seal(vault.context):
                await append_event(vault.audit, INDEX_KEEPER, AuditAction.INDEX_UPGRADE, scope=GLOBAL_SCOPE,
                                   details={"schema_version": schema.SCHEMA_VERSION})
        except BaseException:
            await vault.context.close()
            raise
        if daemon:
            stale = vault.index.clear_stale_readers()
            if stale:
                log.info("index: %d reader slot(s) of ended processes freed", stale)
        if recover:
            # Only the daemon recovers: a CLI command running beside a live daemon must not
            # mistake that daemon's in-flight uploads for leftovers of a crash.
            try:
                vault.recovery = await vault.maintenance.recover()
            except Unavailable as exc:
                # Best effort: a blob store that is down for a moment must not keep the daemon
                # from starting (/readyz reports it); the next start or `gc` cleans up.
                log.warning("start-up recovery skipped: %s", exc.message)
        vault.metrics.records.set(vault.count_records())
        vault.key_admin.publish_epoch_metrics()
        vault.publish_gauges()
        return vault

    def start_background(self) -> None:
        """The daemon's background jobs: an interrupted rewrap resumes, the retention sweeper
        and the audit head witness run on their intervals (0 disables either), and the event
        loop's lag is sampled.

        Jobs over the whole index run once (``elect``: the worker, or on a shared PostgreSQL
        index the node, that leads them, ``vault.services.leases``); the readiness probe, the loop-lag sampler and the
        rendition workers (which take this process's own uploads) run in every worker."""
        self.context.data_keys.watch()
        self.supervisor.spawn_elected("key jobs", self._resume_key_jobs)
        self.supervisor.every("retention sweep", self.config.sweep_interval, self._scheduled_sweep, elect=True)
        if self.config.shred_epoch_interval > 0:
            self.supervisor.every("shred epoch check", min(self.config.shred_epoch_interval, EPOCH_CHECK_SECONDS),
                                  self._scheduled_epoch, elect=True)
        self.supervisor.every("upload purge", min(UPLOAD_PURGE_SECONDS, self.config.upload_expiry / 2),
                              self._purge_uploads, elect=True)
        self.supervisor.spawn_elected("rendition backlog", self._resume_renditions)
        for n in range(self.config.rendition_workers):
            self.supervisor.spawn(f"renditions {n + 1}", self.renditions.run())
        self.supervisor.every("readiness probe", self.config.readiness_interval, self._probe_readiness)
        self.supervisor.every("idempotency purge", min(self.config.idempotency_ttl, PURGE_INTERVAL),
                              self._scheduled_purge, elect=True)
        self.supervisor.every("event loop lag", SAMPLE_INTERVAL, self._sample_loop_lag)
        self._witnessing = self.supervisor.every(
            "audit witness", self.config.audit_witness_interval, self._witness_audit_head, elect=True,
        )

    async def _resume_key_jobs(self) -> None:
        """In the process that leads key jobs (at start, or when it takes over from a dead
        leader): an interrupted shred epoch or rewrap goes on."""
        if self.key_admin.epoch_job().state == "running" and self.keys.name == "local":
            await self.run_epoch(SCHEDULED_EPOCH)  # audited, as when due
        elif self.key_admin.job().state == "running":
            await self.key_admin.run()

    async def _resume_renditions(self) -> None:
        backlog = self.renditions.load_backlog()
        if backlog:
            log.info("renditions: %d queued job(s) resumed", backlog)

    async def stop_background(self) -> None:
        leases = self.supervisor.leases
        witness = self._witnessing and (leases is None or "audit-witness" in leases.leading)
        await self.supervisor.stop()
        await self.renditions.close()
        if witness:
            self._witnessing = False
            try:
                self.publish_audit_head()  # the last head before shutdown
            except ImageVaultError:
                log.warning("the audit head could not be published at shutdown")

    async def close(self) -> None:
        """Stop background jobs and close every resource; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        await self.supervisor.stop()
        await self.renditions.close()
        if self.identity is not None:
            await self.identity.close()
        await self.context.close()

    async def _sample_loop_lag(self) -> None:
        await self.loop_lag.sample()
        self.metrics.sync()

    def _refresh_shared_gauges(self) -> None:
        """Workers, before a scrape: what no single worker counts, read from the index."""
        try:
            self.metrics.records.set(self.count_records())
            seq, head = self.audit.head()
        except ImageVaultError as exc:
            log.warning("gauges not refreshed: %s", exc.message)
            return
        self.metrics.audit_head.info({"seq": str(seq), "hash": head.hex()})
        self.metrics.audit_head_seq.set(seq)

    async def _scheduled_sweep(self) -> None:
        report = await self.sweep_retention(SCHEDULED_SWEEPER, dry_run=False)
        if report.shredded or report.held:
            log.info("retention sweep: %d due, %d shredded, %d held", report.due, report.shredded, report.held)

    async def _purge_uploads(self) -> None:
        purged = await self.uploads.purge()
        if purged:
            log.info("resumable uploads: %d expired upload(s) deleted with their staged data", purged)
            await append_event(self.audit, UPLOAD_PURGER, AuditAction.UPLOAD_EXPIRE, scope=GLOBAL_SCOPE,
                               details={"purged": purged})

    async def _scheduled_epoch(self) -> None:
        """Run the shred epoch when due. With the local keyring the daemon runs it; with a
        remote KMS it cannot (its policy may not rotate or destroy key versions, on purpose:
        a compromised daemon must not be able to destroy the archive), so it says so."""
        status = self.key_admin.publish_epoch_metrics()
        interrupted = status.running.state == "running"
        if not (status.due or interrupted) or self.key_admin.epoch_in_progress:
            return
        if self.keys.name == "local":
            await self.run_epoch(SCHEDULED_EPOCH)
        elif interrupted:
            log.warning("shred epoch %d was interrupted in phase %s; run `imagevault keys epoch` with the "
                        "operator's KMS credentials to finish it", status.running.number, status.running.phase)
        else:
            log.warning("shred epoch due: %d shredded record(s) wait for it; run `imagevault keys epoch` "
                        "with the operator's KMS credentials", status.waiting)

    async def purge_idempotency(self) -> int:
        """Remove expired Idempotency-Key entries (a supervisor job; not audited: they name no
        record and no person, and expired ones are already ignored)."""
        removed = await self.idempotency.purge()
        if removed:
            log.info("idempotency: %d expired entries removed", removed)
        return removed

    async def _scheduled_purge(self) -> None:
        await self.purge_idempotency()

    async def _witness_audit_head(self) -> None:
        current = self.audit.head()
        if current != self._last_head:  # nothing new, nothing to log
            self.publish_audit_head()
            self._last_head = current

    def publish_audit_head(self) -> tuple[int, str]:
        """Log and export the audit chain's head, so an external copy can later detect truncation
        of the chain's tail (a hash chain alone proves edits, not that nothing was cut off)."""
        seq, head = self.audit.head()
        self.metrics.audit_head.info({"seq": str(seq), "hash": head.hex()})
        self.metrics.audit_head_seq.set(seq)
        audit_log.info("audit head seq=%d hash=%s", seq, head.hex())
        return seq, head.hex()

    # authentication ------------------------------------------------------------------------
    async def authenticate(self, token: str | None) -> Principal:
        """The caller a bearer credential names: an opaque ``ivt_`` token, or a JWT access token
        from the identity provider when one is configured (told apart by shape)."""
        if token and looks_like_jwt(token):
            if self.identity is None:
                raise Unauthorized()
            return await self.identity.verify(token)
        try:
            return self.tokens.authenticate(token)
        except IndexTampered:
            # A forged or altered token document (counted by the seal): refused like an unknown
            # token, and audited, since only someone writing the index can cause it.
            await append_event(self.audit, INDEX_KEEPER, AuditAction.INTEGRITY_FAILURE, outcome=IndexTampered.code,
                               details={"kind": "token"}, scope=GLOBAL_SCOPE)
            raise Unauthorized() from None

    async def console_session_started(self, principal: Principal, *, via: str) -> None:
        """Audit a console sign-in: who, and how (``token`` pasted once, or ``oidc``). The session
        is the caller's credential held server-side, so its use is audited as any request is."""
        await append_event(self.audit, principal, AuditAction.SESSION_START, details={"console_sign_in": via})

    async def console_session_ended(self, principal: Principal) -> None:
        """Audit a console sign-out (ended by its user; an idle or expired session simply stops)."""
        await append_event(self.audit, principal, AuditAction.SESSION_END)

    async def act_on_behalf(self, principal: Principal, user: str, *, route: str = "") -> Principal:
        """The principal acting for ``user``, as an application names them (``X-On-Behalf-Of``).

        ``InvalidRequest`` for a name that is not a user name; ``Forbidden`` for a caller
        without the right (a token created with ``--on-behalf``), audited in the caller's tenant
        with the name it claimed, so that an application trying to speak for people shows."""
        check_user_name(user)
        claimed = replace(principal, on_behalf_of=user)
        if not principal.can_act_on_behalf:
            await append_event(self.audit, claimed, AuditAction.ON_BEHALF, outcome=Forbidden.code,
                               details={"route": route} if route else None)
            raise Forbidden("this token may not act on behalf of a user")
        return claimed

    async def refuse_unless(self, principal: Principal, permission: Action, action: AuditAction) -> None:
        """403 before a request body is read, for a role that may not do this at all; the
        refusal is audited like any other (the body, which may hold a patient id, is not)."""
        if not principal.may(permission):
            await append_event(self.audit, principal, action, outcome=Forbidden.code)
            raise Forbidden()

    # records -------------------------------------------------------------------------------
    @audited(AuditAction.CREATE, requires=Action.UPLOAD)
    async def create_image(
        self, principal: Principal, metadata: Metadata | Awaitable[Metadata], content_type: str,
        body: AsyncIterator[bytes], *, idempotency_key: str | None = None,
    ) -> Record:
        """Store one image (``RecordService.create_image``). ``idempotency_key``: the parsed
        ``Idempotency-Key``; a replay is audited as ``create`` with ``idempotent_replay``."""
        record = await self.records.create_image(principal, metadata, content_type, body,
                                                 idempotency_key=idempotency_key)
        self._queue_renditions(record)
        return record

    def _queue_renditions(self, record: Record) -> None:
        if record.renditions is not None and record.renditions.state == "queued":
            self.renditions.enqueue(decode_id(record.id))  # after the commit: the 201 waits for nothing

    # resumable uploads (tus) -------------------------------------------------------------------
    @audited(AuditAction.UPLOAD_START, requires=Action.UPLOAD)
    async def start_upload(self, principal: Principal, request: UploadRequest) -> UploadStatus:
        """Create a resumable upload: metadata validated and upload policy applied now, before
        any byte is accepted. Its entry names the upload and its length, no record yet."""
        status = await self.uploads.create(principal, request)
        note(upload=status.id, length=status.length)
        return status

    @audited(AuditAction.UPLOAD_STATUS, requires=Action.UPLOAD)
    async def upload_status(self, principal: Principal, upload_id: str) -> UploadStatus:
        """HEAD: its offset (and the metadata it was created with: hence audited)."""
        note(upload=upload_id)
        return await self.uploads.status(principal, upload_id)

    async def append_upload(self, principal: Principal, upload_id: str, chunk: Chunk) -> UploadStatus:
        """PATCH: stage a chunk, or complete the upload through ``complete_upload``.

        Not audited itself: a staged chunk is ciphertext no one can read yet, and an entry per
        chunk would cost an fsync per chunk; the role is checked here, a refusal is audited by
        the handler (``refuse_unless``) and the record the last chunk makes is a ``create``."""
        principal.require(Action.UPLOAD)
        return await self.uploads.append(principal, upload_id, chunk)

    @audited(AuditAction.CREATE, requires=Action.UPLOAD)
    async def complete_upload(
        self, principal: Principal, metadata: Metadata, content_type: str, body: AsyncIterator[bytes],
        commit_hook: CommitHook,
    ) -> Record:
        """The last chunk of a resumable upload: the same ingest as ``create_image``."""
        record = await self.records.create_image(principal, metadata, content_type, body, commit_hook=commit_hook)
        self._queue_renditions(record)
        return record

    @audited(AuditAction.UPLOAD_TERMINATE, requires=Action.UPLOAD)
    async def terminate_upload(self, principal: Principal, upload_id: str) -> UploadStatus:
        note(upload=upload_id)
        return await self.uploads.terminate(principal, upload_id)

    @audited(AuditAction.READ, requires=Action.READ, record_arg=True)
    async def get_record(self, principal: Principal, record_id: str) -> Record:
        return await self.records.get_record(principal, record_id)

    @audited(AuditAction.READ, requires=Action.READ, record_arg=True)
    async def open_image(self, principal: Principal, record_id: str) -> ImageHandle:
        return await self.records.open_image(principal, record_id)

    @audited(AuditAction.READ, requires=Action.READ, record_arg=True)
    async def open_rendition(
        self, principal: Principal, record_id: str, kind: str, *, with_data: bool = True,
    ) -> RenditionHandle:
        """A record's thumbnail or preview (``kind``), audited as a read naming the rendition.
        ``with_data=False`` (HEAD, a matching If-None-Match) checks and audits without reading the blob."""
        return await self.renditions.open(principal, record_id, kind, with_data=with_data)

    def rendition_state(self, record_id: str) -> RenditionState | None:
        """A record's rendition job as stored (tests and tools; not access-checked)."""
        return self.renditions.state_of(decode_id(record_id))

    @audited(AuditAction.UPDATE, requires=Action.UPDATE, record_arg=True)
    async def update_metadata(self, principal: Principal, record_id: str, patch: Any) -> Record:
        return await self.records.update_metadata(principal, record_id, patch)

    @audited(AuditAction.DELETE, requires=Action.DELETE, record_arg=True)
    async def shred_record(
        self, principal: Principal, record_id: str, *, reason: str | None = None, override: bool = False
    ) -> ShredResult:
        return await self.records.shred_record(principal, record_id, reason=reason, override=override)

    @audited(AuditAction.SEARCH, requires=Action.SEARCH, describe=search_filters)
    async def search(self, principal: Principal, query: SearchQuery) -> SearchPage:
        return await self.searcher.search(principal, query)

    # patients ------------------------------------------------------------------------------
    @audited(AuditAction.ERASE, requires=Action.ERASE_PATIENT)
    async def erase_patient(
        self, principal: Principal, request: ErasureRequest, *, idempotency_key: str | None = None,
    ) -> ErasureReport:
        """Shred every record of one patient; report refusals (legal hold, retention). With
        ``idempotency_key``, a repeat gets the first report (audited with ``idempotent_replay``)."""
        return await self.patients.erase(principal, request, idempotency_key=idempotency_key)

    @audited(AuditAction.LEGAL_HOLD, requires=Action.LEGAL_HOLD)
    async def set_patient_hold(self, principal: Principal, request: HoldRequest) -> HoldReport:
        return await self.patients.set_hold(principal, request)

    @audited(AuditAction.EXPORT, requires=Action.EXPORT)
    async def export_patient(self, principal: Principal, request: ExportRequest) -> PatientExport:
        """Prepare a subject access export; the caller streams ``chunks()`` of the zip."""
        return await self.patients.export(principal, request)

    @audited(AuditAction.ACCESS_REPORT, requires=Action.ACCESS_REPORT)
    async def access_report(self, principal: Principal, request: AccessReportRequest) -> AccessReport:
        """Every audited access to one patient's records in the caller's tenant; the caller
        streams ``chunks()``. Its own entry names the records covered, never the patient."""
        return await self.access.report(principal, request)

    @audited(AuditAction.RETENTION_SWEEP, requires=Action.OPERATE)
    async def sweep_retention(
        self, principal: Principal, *, dry_run: bool = False, progress: Progress | None = None,
    ) -> SweepReport:
        """Shred every record whose retention has ended and that is not on legal hold: in
        every tenant for an admin, in the caller's own tenant for an operator."""
        return await self.sweeper.sweep(principal, dry_run=dry_run, progress=progress)

    # audit trail ---------------------------------------------------------------------------
    @audited(AuditAction.AUDIT_READ, requires=Action.AUDIT)
    async def audit_entries(
        self, principal: Principal, *, after: int = 0, limit: int = 100, wanted: AuditFilter | None = None,
    ) -> AuditPage:
        """Audit entries matching ``wanted``: an auditor's own tenant's only (global entries,
        about the deployment, are the admin's), every scope for an admin."""
        scopes = None if principal.sees_all_tenants else frozenset({principal.tenant})
        wanted = replace(wanted or AuditFilter(), scopes=scopes)
        loop = asyncio.get_running_loop()
        if wanted.record_id is not None and not await loop.run_in_executor(None, self.audit.record_index_complete):
            await self.audit.index_records()
        return await loop.run_in_executor(None, self.audit.page, after, limit, wanted)

    @audited(AuditAction.AUDIT_VERIFY, requires=Action.AUDIT)
    async def verify_audit(self, principal: Principal) -> VerifyResult:
        """The whole chain (it is one chain for every tenant). The answer names no entry's
        content: whether it holds, how many entries, the head hash, and where it breaks."""
        return await asyncio.get_running_loop().run_in_executor(None, self.audit.verify)

    # key administration --------------------------------------------------------------------
    @audited(AuditAction.KEY_STATUS, requires=Action.ADMIN, global_scope=True)
    async def key_report(self, principal: Principal) -> KeyReport:
        return await self.key_admin.report()

    @audited(AuditAction.KEY_ROTATE, requires=Action.ADMIN, global_scope=True)
    async def rotate_keys(self, principal: Principal, *, background: bool = True) -> RewrapState:
        """New KEK version, then rewrap every stored DEK (in the background for the daemon)."""
        state = await self.key_admin.rotate()
        if background:
            self.supervisor.spawn("rewrap", self.key_admin.run())
        return state

    @audited(AuditAction.KEY_REWRAP, requires=Action.ADMIN, global_scope=True)
    async def rewrap_keys(self, principal: Principal, *, progress: Progress | None = None) -> RewrapState:
        """Rewrap every stored key still on an older KEK version (resumes an interrupted job)."""
        return await self.key_admin.run(progress=progress)

    @audited(AuditAction.KEY_EPOCH, requires=Action.ADMIN, global_scope=True)
    async def run_epoch(
        self, principal: Principal, *, progress: Callable[[str, int, int], None] | None = None,
    ) -> EpochState:
        """The shred epoch, start (or resume) to end: afterwards nothing erased before it can be
        opened or linked to a patient id from the data directory or older snapshots."""
        return await self.key_admin.epoch(progress)

    @audited(AuditAction.KEY_EPOCH, requires=Action.ADMIN, global_scope=True)
    async def start_epoch(self, principal: Principal) -> EpochState:
        """Start the shred epoch and let it run in the background (progress in ``key_report``)."""
        if self.key_admin.epoch_in_progress:
            return self.key_admin.epoch_job()  # reported, not started twice
        state = await self.key_admin.begin_epoch()
        self.supervisor.spawn("shred epoch", self.key_admin.epoch())
        return state

    @audited(AuditAction.KEY_RETIRE, requires=Action.ADMIN, global_scope=True)
    async def retire_keys(self, principal: Principal) -> KeyReport:
        await self.key_admin.retire()
        return await self.key_admin.report()

    # maintenance ---------------------------------------------------------------------------
    @audited(AuditAction.SCRUB, requires=Action.ADMIN, global_scope=True)
    async def verify_blobs(
        self, principal: Principal, *, sample: int | None = None, progress: Progress | None = None,
    ) -> ScrubReport:
        """Decrypt and authenticate every blob (or a random sample) against its record."""
        return await self.maintenance.scrub(sample=sample, progress=progress)

    @audited(AuditAction.RENDITION_BACKFILL, requires=Action.ADMIN, global_scope=True)
    async def backfill_renditions(self, principal: Principal, *, progress: Progress | None = None) -> BackfillReport:
        """Thumbnails and previews for every record that has none yet, made here (resumable)."""
        return await self.renditions.backfill(progress)

    @audited(AuditAction.GC, requires=Action.ADMIN, global_scope=True,
             describe=lambda *a, dry_run=False, **kw: {"dry_run": True} if dry_run else {})
    async def collect_garbage(
        self, principal: Principal, *, min_age: timedelta = GC_MIN_AGE,
        progress: Callable[[int, int | None], None] | None = None, dry_run: bool = False,
    ) -> GcResult:
        """Delete expired resumable uploads with their staged data, then orphan blobs older than
        ``min_age`` (``Maintenance.collect_garbage``); staged data of live uploads is kept. With
        ``dry_run``, count the orphans only and purge nothing."""
        if not dry_run:
            note(uploads_purged=await self.uploads.purge())
        return await self.maintenance.collect_garbage(min_age=min_age, progress=progress, dry_run=dry_run)

    @audited(AuditAction.STATS, requires=Action.OPERATE)
    async def stats(self, principal: Principal) -> dict[str, Any]:
        """Records and bytes: of every tenant for an admin, of the caller's own for an operator
        (no other tenant's name or numbers)."""
        return self.maintenance.stats(None if principal.sees_all_tenants else principal.tenant)

    def count_records(self) -> int:
        return self.maintenance.count_records()

    def info(self) -> dict[str, Any]:
        return self.maintenance.info()

    async def _probe_readiness(self) -> None:
        self._readiness = await self.maintenance.readiness()
        self.publish_gauges()

    def publish_gauges(self) -> None:
        """Gauges read from disk rather than updated as things happen (other processes may
        change them): disk and map use, the rewrap job, the audit head's sequence number."""
        try:
            self.maintenance.publish_storage_metrics()
            self.key_admin.publish_rewrap_metrics()
            self.metrics.audit_head_seq.set(self.audit.head()[0])
        except ImageVaultError as exc:
            log.warning("gauges not refreshed: %s", exc.message)

    async def readiness(self) -> Readiness:
        """The last readiness probe (the daemon probes every ``readiness_interval`` seconds; a
        request never causes a probe of its own once one has run)."""
        if self._readiness is None:
            await self._probe_readiness()
        readiness = self._readiness
        assert readiness is not None
        readiness = replace(readiness, notes=dict(readiness.notes))
        epoch = self.key_admin.last_epoch_status
        if epoch is not None and epoch.due:
            readiness.notes["shred_epoch"] = {"due": True, "shredded_waiting": epoch.waiting}
        return readiness

    # backup and restore --------------------------------------------------------------------
    @audited(AuditAction.BACKUP, requires=Action.ADMIN, global_scope=True)
    async def backup(
        self, principal: Principal, dest: Path, *, keep: int = DEFAULT_KEEP, progress: Progress | None = None,
    ) -> BackupReport:
        """Online backup: index and audit snapshot (no key material), blobs copied
        incrementally, erasure propagated (``Backups``)."""
        return await self.backups.backup(dest, keep=keep, progress=progress)

    @audited(AuditAction.KEY_ESCROW, requires=Action.ADMIN, global_scope=True)
    async def escrow_keys(self, principal: Principal, passphrase: str, **limits: int) -> bytes:
        """The local keyring's live KEK versions, sealed under ``passphrase``: kept apart from
        the backups, it is what a restore of them needs."""
        return await self.key_admin.escrow(passphrase, **limits)

    @staticmethod
    async def restore(
        principal: Principal, config: Config, src: Path, *, snapshot: str | None = None,
        escrow: bytes | None = None, escrow_passphrase: str | None = None, progress: Progress | None = None,
    ) -> RestoreReport:
        """Restore a backup into the empty data directory of ``config``; the restored audit
        trail gets the ``restore`` entry. There is no service before a restore, so this is the
        one operation that opens its own resources."""
        principal.require(Action.ADMIN)
        report = await Backups.restore(config, src, snapshot=snapshot, escrow=escrow,
                                       escrow_passphrase=escrow_passphrase, progress=progress)
        trail = AuditLog(config.audit_dir, utc_now, map_size=config.lmdb_map_size)
        try:
            details = {"snapshot": report.snapshot, "over": report.audit_from, "records": report.records,
                       "revocations_applied": report.revocations_applied,
                       "dropped_unopenable_keys": len(report.dropped_unopenable_keys),
                       "missing_blobs": len(report.missing_blobs)}
            await append_event(trail, principal, AuditAction.RESTORE, details=details, scope=GLOBAL_SCOPE)
        finally:
            trail.close()
        return report

    # tokens --------------------------------------------------------------------------------
    @audited(AuditAction.TOKEN_CREATE, requires=Action.ADMIN, scope=token_scope)
    async def create_token(
        self, principal: Principal, tenant: str | None, role: Role, name: str, ttl: str | None = None,
        idle_timeout: str | None = None, *, on_behalf: bool = False,
    ) -> tuple[str, TokenInfo]:
        """A new bearer token; its value is returned here and never again. An admin token has
        no tenant (``tenant`` None or ``ADMIN_TENANT``)."""
        return await self.tokens.create(tenant, role, name, ttl, idle_timeout, on_behalf)

    @audited(AuditAction.TOKEN_LIST, requires=Action.ADMIN, scope=token_scope)
    async def list_tokens(self, principal: Principal, tenant: str | None = None) -> list[TokenInfo]:
        """Every token, or one tenant's. A listing of all also leaves an entry in each listed
        tenant's scope, so every tenant's auditors learn that its token names were shown."""
        tokens = self.tokens.list(tenant)
        if tenant is None:
            for owner in sorted({t.tenant for t in tokens} - {ADMIN_TENANT}):
                await append_event(self.audit, principal, AuditAction.TOKEN_LIST, scope=token_scope(owner),
                                   details={"tokens": sum(1 for t in tokens if t.tenant == owner)})
        return tokens

    @audited(AuditAction.TOKEN_REVOKE, requires=Action.ADMIN)
    async def revoke_token(self, principal: Principal, name: str) -> Revocation:
        """Revoke the active token(s) with this name; audited in their tenant's scope."""
        return await self.tokens.revoke(name)
