"""A short run of the SIGKILL crash harness (``make crash-test`` runs the long one)."""

from __future__ import annotations

from tests.crash_harness import Ledger, run_rounds


def test_the_ledger_accepts_either_of_two_overlapping_patches_and_only_the_last_of_two_in_turn():
    ledger = Ledger()
    ledger.acked["r"] = {"key": 1, "sha256": "", "lesions": {"L-0"}}
    # A and B overlap; A's answer comes last, but B may have committed last.
    a = ledger.patch_sent("r", "A")
    b = ledger.patch_sent("r", "B")
    ledger.patch_answered("r", "B", b)
    ledger.patch_answered("r", "A", a)
    assert ledger.lesions_allowed("r") == {"A", "B"}
    ledger.settle("r", "B")
    # C is answered before D is sent: only D may show now (C would be a lost update).
    c = ledger.patch_sent("r", "C")
    ledger.patch_answered("r", "C", c)
    d = ledger.patch_sent("r", "D")
    ledger.patch_answered("r", "D", d)
    assert ledger.lesions_allowed("r") == {"D"}
    # E is unanswered (the daemon died): D or E.
    ledger.patch_sent("r", "E")
    assert ledger.lesions_allowed("r") == {"D", "E"}


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
