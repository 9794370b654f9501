"""A bounded schemathesis run in `make test` (``make fuzz`` runs thousands of cases per role)."""

from __future__ import annotations

import pytest

from tests.fuzz import find_schemathesis, run_fuzz


@pytest.mark.skipif(find_schemathesis() is None, reason="schemathesis is not installed")
def test_schemathesis_finds_nothing_for_any_role(tmp_path):
    report = run_fuzz(12, tmp_path, seed=20261122)
    details = {role: (r["failures"], r["output_tail"][-1500:]) for role, r in report["roles"].items() if r["exit_code"]}
    assert report["failed_roles"] == [], details
    assert report["server_errors_logged"] == 0
    assert report["cases"] > 1000
