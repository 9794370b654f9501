"""A short run of the SIGKILL crash harness (``make crash-test`` runs the long one)."""

from __future__ import annotations

from tests.crash_harness import run_rounds


async def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path):
    totals = await run_rounds(6, tmp_path, seed=20261121)
    assert totals["rounds"] == 6
    assert totals["acknowledged_uploads"] > 20
    assert totals["acknowledged_writes_lost"] == 0, totals
    assert totals["half_visible"] == 0, totals
    assert totals["audit_broken"] == 0, totals


async def test_sigkill_of_the_whole_worker_group_or_of_one_worker_loses_no_acknowledged_write(tmp_path):
    totals = await run_rounds(4, tmp_path, seed=20261129, workers=2, kill="mixed")
    assert totals["rounds"] == 4
    assert totals["workers_killed"] == 2
    assert totals["acknowledged_uploads"] > 10
    assert totals["acknowledged_writes_lost"] == 0, totals
    assert totals["half_visible"] == 0, totals
    assert totals["audit_broken"] == 0, totals
