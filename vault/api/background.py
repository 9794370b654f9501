"""Background work of the daemon as ``cleanup_ctx`` generators (started after the service,
stopped before it): the retention sweeper and the audit head witness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

from vault.api.keys import VAULT
from vault.errors import ImageVaultError
from vault.retention.sweeper import run_periodically

log = logging.getLogger("vault.audit")


@contextlib.asynccontextmanager
async def _periodic(name: str, interval: float, job: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[bool]:
    """Run ``job`` as a task while the app lives (``interval`` 0 disables it); yields whether it runs."""
    task = asyncio.create_task(job(), name=name) if interval > 0 else None
    try:
        yield task is not None
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def retention_sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sweep at start-up and every ``sweep_interval`` seconds; 0 disables the sweeper."""
    vault = app[VAULT]
    interval = vault.config.sweep_interval
    async with _periodic("retention-sweeper", interval, lambda: run_periodically(vault, interval)):
        yield


def publish_audit_head(vault: Any) -> tuple[int, str]:
    """Log and export the audit chain's head, so an external copy can later detect truncation
    of the chain's tail (a hash chain alone proves edits, not that nothing was cut off)."""
    seq, head = vault.audit.head()
    vault.metrics.audit_head.info({"seq": str(seq), "hash": head.hex()})
    vault.metrics.audit_head_seq.set(seq)
    log.info("audit head seq=%d hash=%s", seq, head.hex())
    return seq, head.hex()


async def _witness(vault: Any, interval: float) -> None:
    last = None
    while True:
        current = vault.audit.head()
        if current != last:  # nothing new, nothing to log
            publish_audit_head(vault)
            last = current
        await asyncio.sleep(interval)


async def audit_witness_ctx(app: web.Application) -> AsyncIterator[None]:
    """Publish the audit head at start-up and every ``audit_witness_interval`` seconds."""
    vault = app[VAULT]
    interval = vault.config.audit_witness_interval
    async with _periodic("audit-witness", interval, lambda: _witness(vault, interval)) as running:
        yield
    if running:
        with contextlib.suppress(ImageVaultError):  # the service may already be closed
            publish_audit_head(vault)  # the last head before shutdown
