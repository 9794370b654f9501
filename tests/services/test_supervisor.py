"""The supervisor stops its periodic jobs even when a cancellation gets lost inside one."""

from __future__ import annotations

import asyncio

from vault.services.supervisor import Supervisor


async def test_stop_ends_a_periodic_job_whose_run_swallowed_the_cancellation():
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass  # what asyncio.wait_for does on 3.11 when its inner task finishes meanwhile

    supervisor = Supervisor()
    assert supervisor.every("job", 0.01, run)
    await asyncio.sleep(0.02)
    await asyncio.wait_for(supervisor.stop(), timeout=5)
    assert supervisor.running == 0 and runs >= 1


async def test_an_interval_of_zero_disables_a_job():
    supervisor = Supervisor()

    async def run() -> None:
        raise AssertionError("must not run")

    assert not supervisor.every("job", 0, run)
    await supervisor.stop()
