"""Background work of the daemon as ``cleanup_ctx`` generators (started after the service,
stopped before it): the retention sweeper."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from vault.api.keys import VAULT
from vault.retention.sweeper import run_periodically


async def retention_sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sweep at start-up and every ``sweep_interval`` seconds; 0 disables the sweeper."""
    vault = app[VAULT]
    interval = vault.config.sweep_interval
    task = asyncio.create_task(run_periodically(vault, interval), name="retention-sweeper") if interval > 0 else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
