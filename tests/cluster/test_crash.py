"""Six rounds of the cluster crash harness (tests/cluster/harness.py; ``make crash-test`` runs
20): one of three daemons SIGKILLed at random under writes on every node, 0 acknowledged
writes lost, one verifying audit chain."""

from __future__ import annotations

from tests.cluster.harness import run_rounds


async def test_sigkill_of_a_random_node_under_load_loses_no_acknowledged_write(cluster):
    totals = await run_rounds(cluster, 6, seed=17, min_load=0.5, max_load=1.5)
    assert totals["rounds"] == 6 and totals["acknowledged"] > 20, totals
    assert totals["acknowledged_writes_lost"] == 0, totals
    assert totals["resurrected"] == 0 and totals["half_visible"] == 0, totals
    assert totals["audit_broken"] == 0, totals
