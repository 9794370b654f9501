"""The parts every service shares, built once per process and handed to each service.

``ServiceContext`` holds the configuration, the index, the key provider, the blob backend, the
audit trail, the metrics, the clock and the key access paths (data keys through the DEK cache,
tenant blind-index keys). Services receive it at construction and never reach for each other
through it: the facade (``vault.service.Vault``) composes them.

``open_context`` is the one place that opens these resources, and ``ServiceContext.close``
the one place that closes them, in reverse order.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from vault import datadir
from vault.audit.store import AuditLog
from vault.config import Config
from vault.errors import IndexUnavailable
from vault.files import tighten_modes
from vault.index.engine import IndexEngine
from vault.keys.base import KeyProvider
from vault.keys.cache import DekCache
from vault.keys.pool import DekPool
from vault.metrics import Metrics
from vault.retention.policy import RetentionPolicy, parse_tenant_years
from vault.services.datakeys import DataKeys, TenantKeys
from vault.store.backends.base import BlobBackend

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(eq=False)
class ServiceContext:
    config: Config
    index: IndexEngine
    keys: KeyProvider
    backend: BlobBackend
    audit: AuditLog
    metrics: Metrics
    clock: Clock
    retention: RetentionPolicy
    dek_cache: DekCache
    data_keys: DataKeys
    tenant_keys: TenantKeys
    # Pre-wrapped DEKs for remote KMSs (vault.keys.pool); None for the local keyring.
    dek_pool: DekPool | None
    # CPU-bound per-byte work (hashing, AES-GCM, blob file I/O of a batch) off the event loop.
    # Its own pool, not the default executor: fsyncs queued there would delay this work.
    crypto_pool: ThreadPoolExecutor = field(repr=False)
    daemon_lock: int | None = None

    async def close(self) -> None:
        if self.dek_pool is not None:
            await self.dek_pool.close()
        self.index.close()
        self.audit.close()
        await self.backend.close()
        await self.keys.close()
        self.crypto_pool.shutdown(wait=True)
        if self.daemon_lock is not None:
            os.close(self.daemon_lock)
            self.daemon_lock = None


def build_context(
    config: Config, keys: KeyProvider, backend: BlobBackend, index: IndexEngine, metrics: Metrics, *,
    clock: Clock = utc_now, audit: AuditLog | None = None,
) -> ServiceContext:
    """Compose a context from opened resources (the audit trail is opened here unless given)."""
    from vault import components

    audit_log = audit if audit is not None else components.open_audit(config, clock)
    cache = DekCache(config.dek_cache_size, config.dek_cache_ttl)
    metrics.watch_key_provider(keys)
    data_keys = DataKeys(index, keys, cache, metrics)
    tenant_keys = TenantKeys(index, keys, clock)
    dek_pool = DekPool(keys) if keys.prefers_pooling and config.dek_pool else None
    data_keys.on_stale(tenant_keys.clear)
    if dek_pool is not None:
        data_keys.on_stale(dek_pool.clear)
    return ServiceContext(
        config=config, index=index, keys=keys, backend=backend, audit=audit_log, metrics=metrics, clock=clock,
        retention=RetentionPolicy(
            config.medical_retention_years, config.aesthetic_retention_months,
            parse_tenant_years(config.medical_retention_by_tenant),
        ),
        dek_cache=cache,
        data_keys=data_keys,
        tenant_keys=tenant_keys,
        dek_pool=dek_pool,
        crypto_pool=ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="seal"),
    )


async def open_context(
    config: Config, *, keys: KeyProvider | None = None, backend: BlobBackend | None = None,
    clock: Clock = utc_now, lock: bool = False,
) -> ServiceContext:
    """Open the configured key provider, blob backend and index (unless given) into a context.
    ``lock=True`` takes the data directory's exclusive daemon lock first."""
    from vault import components  # provider modules pull in optional clients

    recorded = datadir.check(config)  # before anything is opened, created or contacted
    existing = datadir.has_index(config)
    restrict_data_dir(config)
    metrics = Metrics()
    opened: list[KeyProvider | BlobBackend] = []  # closed again if a later step fails
    daemon_lock = None
    try:
        if keys is None:
            keys = await components.open_key_provider(config)
            opened.append(keys)
        if backend is None:
            backend = await components.open_backend(config)
            opened.append(backend)
        daemon_lock = lock_data_dir(config) if lock else None
        index = components.open_index(config, on_commit=metrics.observe_commit, create=True)
    except BaseException:
        for resource in reversed(opened):
            await resource.close()
        if daemon_lock is not None:
            os.close(daemon_lock)
        raise
    context = build_context(config, keys, backend, index, metrics, clock=clock)
    context.daemon_lock = daemon_lock
    try:
        datadir.record(config, recorded, existing=existing)
    except BaseException:
        await context.close()
        raise
    return context


def restrict_data_dir(config: Config) -> int:
    """Owner-only modes for the data directory and what is under it that this process creates
    (directories 0700, index, audit, key and quarantined files 0600), whatever umask made them.
    Blob files are created 0600 and never change, so their up to a million entries are not
    walked. Logged once, when something was looser. Returns the number of paths changed."""
    if not config.data_dir.is_dir():
        return 0
    changed = tighten_modes(config.data_dir, depth=0, files=False)
    changed += tighten_modes(config.blobs_dir, depth=1, files=False)  # blobs/, its shards and tmp/
    for directory in (config.quarantine_dir, config.index_dir, config.audit_dir, config.keys_dir):
        changed += tighten_modes(directory, depth=1, files=True)
    if changed:
        log.warning("tightened %d path(s) of the data directory to owner-only access (0700/0600)", changed)
    return changed


def lock_data_dir(config: Config) -> int:
    """One daemon per data directory: a second one would race recovery and group commits."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(config.data_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise IndexUnavailable("another imagevault daemon is serving this data directory") from exc
    return fd
