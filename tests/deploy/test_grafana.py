"""deploy/grafana: the committed dashboard is what build.py makes, and reads only metrics the
daemon exports or the rules record."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from tests.deploy.promql import metric_names
from tests.deploy.test_prometheus_rules import recorded

ROOT = Path(__file__).resolve().parent.parent.parent
BUILD = ROOT / "deploy" / "grafana" / "build.py"
DASHBOARD = ROOT / "deploy" / "grafana" / "imagevault.json"


def builder() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    found += [v["definition"].removeprefix("label_values(").rsplit(",", 1)[0]
              for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return found


def test_committed_dashboard_is_the_generated_one():
    assert DASHBOARD.read_text() == builder().render(), "run: python deploy/grafana/build.py"


def test_dashboard_reads_only_exported_or_recorded_metrics(exported_metric_names):
    dashboard = json.loads(DASHBOARD.read_text())
    allowed = exported_metric_names | recorded()
    exprs = queries(dashboard)
    assert len(exprs) > 20
    for expr in exprs:
        used = metric_names(expr)
        assert used, expr
        assert used <= allowed, f"dashboard query reads unknown metrics {sorted(used - allowed)}: {expr}"


def test_dashboard_panels_have_unique_ids_and_do_not_overlap():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_every_exported_metric_is_listed_in_the_api_doc(exported_metric_names):
    """docs/api.md, "GET /metrics", names every series the daemon exports (rules and the
    dashboard are written from that table)."""
    text = (ROOT / "docs" / "api.md").read_text()
    table = text[text.index("### GET /metrics"):text.index("### GET /openapi.json")]
    for name in exported_metric_names:
        if name.endswith("_created"):
            continue  # prometheus_client's creation time of each counter and histogram
        base = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        assert f"`{name}`" in table or f"`{base}`" in table, f"{name} is not in docs/api.md, GET /metrics"
