"""deploy/prometheus: the rules load, their unit tests pass under promtool, every alert is tested
and has a runbook, and every metric they read is one the daemon exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import metric_names
from tests.deploy.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "deploy" / "prometheus" / "imagevault-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "imagevault-rules.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
# Series Prometheus makes itself, not the daemon.
PROMETHEUS_OWN = {"up"}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alerts() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_accepts_the_rules():
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass():
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                            check=False, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_broken_rule_fails_its_unit_test(tmp_path):
    """The unit tests can fail: the disk alert with its threshold moved no longer passes."""
    promtool = require_tool("promtool", "prometheus")
    text = RULES.read_text()
    assert "imagevault:data_dir_free:ratio < 0.10" in text
    (tmp_path / RULES.name).write_text(text.replace("imagevault:data_dir_free:ratio < 0.10", "imagevault:data_dir_free:ratio < 0.01"))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    assert result.returncode != 0 and "ImageVaultDiskNearlyFull" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test_in_which_it_fires():
    firing = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                firing.add(check["alertname"])
    missing = sorted({rule["alert"] for rule in alerts()} - firing)
    assert not missing, f"alerts never shown firing in {RULE_TESTS.name}: {missing}"


def test_every_alert_has_a_severity_and_a_runbook_section():
    headings = {anchor(line.lstrip("#")) for line in OPERATIONS.read_text().splitlines() if line.startswith("#")}
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert anchor(name) in headings, f"docs/operations.md has no section '### {name}'"
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{anchor(name)}", name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_rules_read_only_their_own_recordings_or_daemon_metrics(exported_metric_names):
    allowed = exported_metric_names | recorded() | PROMETHEUS_OWN
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used, rule
        unknown = sorted(used - allowed)
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads metrics the daemon does not export: {unknown}"


@pytest.mark.parametrize("expr, names", [
    ('sum by (job, instance) (rate(a_total{route=~"/v1/.+", le="0.25"}[5m]))', {"a_total"}),
    ("x > on (job) group_left (env) y and ignoring (kind) z unless w offset 5m", {"x", "y", "z", "w"}),
    ('histogram_quantile(0.99, sum by (le) (rate(h_bucket{job="$job"}[$__rate_interval]))) > 1e9', {"h_bucket"}),
    ("rec:ord:ing_rate5m > (14.4 * 0.01) or time() - t_seconds", {"rec:ord:ing_rate5m", "t_seconds"}),
    ('m{a="{not}", b=`x{y}`} == bool 1', {"m"}),
])
def test_promql_parser_finds_the_metric_names(expr, names):
    assert metric_names(expr) == names
