"""The daemon's background jobs under one owner: started with the service, stopped before it.

A job is a one-off coroutine (a resumed rewrap) or a periodic one (the retention sweep, the
audit head witness). A periodic job runs at once, then every ``interval`` seconds after the
previous run ended; a failed run is logged by exception class (never its message, which may
carry data) and the next one runs on schedule. ``stop`` cancels every job and waits for it.

A job started with ``elect=True`` runs once per host, or once per cluster on a shared index
(``vault.services.leases``): each round it
first makes sure this process leads it, and a process that does not tries again every
``RETRY_SECONDS`` until the leader is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from vault.services.leases import RETRY_SECONDS, JobLeases

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, leases: JobLeases | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping: set[asyncio.Event] = set()
        self.leases = leases

    async def _leads(self, name: str) -> bool:
        if self.leases is None:
            return True
        job = name.replace(" ", "-")
        if self.leases.across_hosts:  # a database round trip: not on the event loop
            return await asyncio.to_thread(self.leases.try_lead, job)
        return self.leases.try_lead(job)

    @property
    def running(self) -> int:
        return len(self._tasks)

    def spawn(self, name: str, job: Coroutine[Any, Any, Any]) -> None:
        """Run ``job`` once, in the background."""
        task = asyncio.ensure_future(job)
        task.set_name(name)
        self._tasks.add(task)

        def finished(done: asyncio.Task[Any]) -> None:
            self._tasks.discard(done)
            if not done.cancelled() and done.exception() is not None:
                log.error("background job %s failed: %s", name, done.exception().__class__.__name__)

        task.add_done_callback(finished)

    def spawn_elected(self, name: str, job: Callable[[], Awaitable[Any]]) -> None:
        """Run ``job()`` once, in the process that leads ``name`` (when this one becomes it)."""
        stopping = asyncio.Event()
        self._stopping.add(stopping)

        async def wait_then_run() -> None:
            while not await self._leads(name):
                await asyncio.sleep(RETRY_SECONDS)
                if stopping.is_set():
                    return
            await job()

        self.spawn(name, wait_then_run())

    def every(self, name: str, interval: float, run: Callable[[], Awaitable[None]], *, elect: bool = False) -> bool:
        """Run ``run`` now and then every ``interval`` seconds; 0 disables it (returns False).
        ``elect``: only in the process that leads ``name`` (the others keep trying to)."""
        if interval <= 0:
            return False
        stopping = asyncio.Event()
        self._stopping.add(stopping)

        async def loop() -> None:
            # The stop flag as well as cancellation: on Python 3.11 a cancellation that arrives
            # as an inner asyncio.wait_for completes is swallowed, and the loop would go on.
            while not stopping.is_set():
                if elect and not await self._leads(name):
                    await asyncio.sleep(min(interval, RETRY_SECONDS))
                    continue
                try:
                    await run()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - keep the schedule; the next run may succeed
                    log.error("%s failed: %s", name, exc.__class__.__name__)
                if stopping.is_set():
                    return
                await asyncio.sleep(interval)

        self.spawn(name, loop())
        return True

    async def stop(self) -> None:
        for stopping in self._stopping:
            stopping.set()
        self._stopping.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.leases is not None:
            self.leases.release_all()
