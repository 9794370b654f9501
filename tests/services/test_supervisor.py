"""The supervisor stops its periodic jobs even when a cancellation gets lost inside one."""

from __future__ import annotations

import asyncio

import pytest

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


def test_one_process_leads_a_job_until_it_lets_go(tmp_path):
    from vault.services.leases import JobLeases

    first, second = JobLeases(tmp_path / "jobs"), JobLeases(tmp_path / "jobs")  # two open files: two "processes"
    assert first.try_lead("retention-sweep")
    assert first.try_lead("retention-sweep")  # kept
    assert not second.try_lead("retention-sweep")
    assert second.try_lead("audit-witness")  # each job has its own leader
    first.release_all()
    assert second.try_lead("retention-sweep")
    assert second.leading == {"retention-sweep", "audit-witness"}
    with pytest.raises(ValueError):
        first.try_lead("../escape")


async def test_an_elected_job_runs_in_one_supervisor_and_moves_when_its_leader_stops(tmp_path, monkeypatch):
    from vault.services import supervisor as module
    from vault.services.leases import JobLeases

    monkeypatch.setattr(module, "RETRY_SECONDS", 0.05)
    runs = {"a": 0, "b": 0}

    def job(name):
        async def run():
            runs[name] += 1
        return run

    a, b = Supervisor(JobLeases(tmp_path / "jobs")), Supervisor(JobLeases(tmp_path / "jobs"))
    a.every("retention sweep", 0.02, job("a"), elect=True)
    await asyncio.sleep(0.01)
    b.every("retention sweep", 0.02, job("b"), elect=True)
    await asyncio.sleep(0.3)
    assert runs["a"] >= 2 and runs["b"] == 0
    await a.stop()  # the leader stops (a dead process's lock goes the same way)
    await asyncio.sleep(0.3)
    assert runs["b"] >= 2
    await b.stop()
