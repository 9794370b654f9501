"""Build the Grafana dashboard deploy/grafana/imagevault.json from this file.

    python deploy/grafana/build.py          # rewrite imagevault.json
    python deploy/grafana/build.py --check  # exit 1 if imagevault.json is not what this builds

Plain dicts in Grafana's dashboard JSON model (schemaVersion 39, Grafana 10/11): no library, so
the output depends on nothing but this file. The dashboard takes its Prometheus data source and
its job and instance from variables, so it imports into any Grafana. tests/deploy/ checks that
the committed JSON is what this builds and that every query uses only metrics the daemon exports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "imagevault.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job="$job", instance=~"$instance"'
WIDTH = 24


def target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}


def timeseries(title: str, targets: list[dict[str, Any]], unit: str = "short", description: str = "",
               stack: bool = False) -> dict[str, Any]:
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": {"fillOpacity": 10, "stacking": {"mode": "normal" if stack else "none"}}},
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
    }


def stat(title: str, expr: str, unit: str = "short", description: str = "",
         thresholds: list[tuple[float | None, str]] | None = None) -> dict[str, Any]:
    steps = [{"color": color, "value": value} for value, color in (thresholds or [(None, "green")])]
    return {
        "type": "stat", "title": title, "description": description, "datasource": DATASOURCE,
        "targets": [target(expr)],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "area", "textMode": "auto"},
    }


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


BAD = [(None, "green"), (1, "red")]


def panels() -> list[dict[str, Any]]:
    """Rows of panels, top to bottom: what pages first, then traffic, then storage and keys."""
    return [
        row("Alerts: what wakes someone"),
        stat("Blob integrity errors (1h)", f"sum(increase(imagevault_integrity_errors_total{{{SEL}}}[1h]))",
             thresholds=BAD, description="Blob reads that failed authentication (ImageVaultBlobIntegrityErrors)."),
        stat("Index integrity errors (1h)", f"sum(increase(imagevault_index_integrity_errors_total{{{SEL}}}[1h]))",
             thresholds=BAD, description="Index values that failed their MAC (ImageVaultIndexIntegrityErrors)."),
        stat("Scrub: corrupt or missing", f"max(imagevault_scrub_corrupt_blobs{{{SEL}}})", thresholds=BAD,
             description="Found by the last `imagevault verify` (ImageVaultScrubCorruption)."),
        stat("KMS errors (15m)", f"sum(increase(imagevault_kms_errors_total{{{SEL}}}[15m]))", thresholds=BAD,
             description="Failed calls to the key provider (ImageVaultKmsErrors)."),
        stat("Shred epoch due", f"max(imagevault_shred_epoch_due{{{SEL}}})", thresholds=BAD,
             description="1 while a shred epoch is due (ImageVaultShredEpochOverdue)."),
        stat("Data disk free", f"min(imagevault_data_dir_free_bytes{{{SEL}}} / imagevault_data_dir_size_bytes{{{SEL}}})",
             unit="percentunit", thresholds=[(None, "red"), (0.10, "orange"), (0.20, "green")],
             description="Free space of the data directory's file system (ImageVaultDiskNearlyFull)."),
        row("Traffic"),
        timeseries("Requests by route and status",
                   [target(f"sum by (route, method, status) (rate(imagevault_http_requests_total{{{SEL}}}[$__rate_interval]))",
                           "{{method}} {{route}} {{status}}")], unit="reqps"),
        timeseries("Latency p50 / p99 by route",
                   [target(f"histogram_quantile(0.5, sum by (le, route) (rate(imagevault_http_request_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                           "p50 {{route}}", "A"),
                    target(f"histogram_quantile(0.99, sum by (le, route) (rate(imagevault_http_request_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                           "p99 {{route}}", "B")], unit="s"),
        timeseries("Latency SLO: slow fraction of searches and metadata requests (budget 1 %)",
                   [target("imagevault:slo_latency_errors:ratio_rate5m{job=\"$job\"}", "5m", "A"),
                    target("imagevault:slo_latency_errors:ratio_rate1h{job=\"$job\"}", "1h", "B"),
                    target("imagevault:slo_latency_errors:ratio_rate6h{job=\"$job\"}", "6h", "C")],
                   unit="percentunit", description="Recording rules of deploy/prometheus/imagevault-rules.yml."),
        timeseries("Upload server-error ratio",
                   [target(f"imagevault:upload_errors:ratio_rate5m{{{SEL}}}", "{{instance}}")], unit="percentunit"),
        timeseries("Uploads refused before storing, by code",
                   [target(f"sum by (code) (rate(imagevault_uploads_rejected_total{{{SEL}}}[$__rate_interval]))", "{{code}}")],
                   unit="reqps"),
        timeseries("Bytes stored and served",
                   [target(f"sum(rate(imagevault_bytes_stored_total{{{SEL}}}[$__rate_interval]))", "stored", "A"),
                    target(f"sum(rate(imagevault_bytes_served_total{{{SEL}}}[$__rate_interval]))", "served", "B")],
                   unit="Bps"),
        timeseries("Connections and uploads in flight",
                   [target(f"sum(imagevault_connections_open{{{SEL}}})", "connections", "A"),
                    target(f"sum(imagevault_uploads_in_flight{{{SEL}}})", "uploads", "B"),
                    target(f"sum by (reason) (rate(imagevault_connections_evicted_total{{{SEL}}}[$__rate_interval]))",
                           "evicted {{reason}}/s", "C")]),
        timeseries("Event loop lag p99",
                   [target(f"histogram_quantile(0.99, sum by (le) (rate(imagevault_event_loop_lag_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                           "p99")], unit="s"),
        row("Storage and index"),
        timeseries("Records", [target(f"sum(imagevault_records{{{SEL}}})", "records")]),
        timeseries("Data disk free", [target(f"imagevault_data_dir_free_bytes{{{SEL}}}", "{{instance}}")], unit="bytes"),
        timeseries("LMDB map in use",
                   [target(f"imagevault_lmdb_map_used_ratio{{{SEL}}}", "{{instance}} {{environment}}")],
                   unit="percentunit", description="A full map doubles on the next write; it needs that much free disk."),
        timeseries("LMDB group commit p99",
                   [target(f"histogram_quantile(0.99, sum by (le) (rate(imagevault_lmdb_commit_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                           "p99")], unit="s"),
        timeseries("Search entries walked p99",
                   [target(f"histogram_quantile(0.99, sum by (le) (rate(imagevault_search_entries_walked_bucket{{{SEL}}}[$__rate_interval])))",
                           "p99")]),
        row("Keys, erasure and audit"),
        timeseries("KMS calls and errors by kind",
                   [target(f"sum by (kind) (rate(imagevault_kms_calls_total{{{SEL}}}[$__rate_interval]))", "calls {{kind}}", "A"),
                    target(f"sum by (kind) (rate(imagevault_kms_errors_total{{{SEL}}}[$__rate_interval]))", "errors {{kind}}", "B")],
                   unit="ops"),
        timeseries("Data key cache",
                   [target(f"sum by (result) (rate(imagevault_dek_cache_total{{{SEL}}}[$__rate_interval]))", "{{result}}")],
                   unit="ops"),
        timeseries("Rewrap",
                   [target(f"max(imagevault_rewrap_running{{{SEL}}})", "running", "A"),
                    target(f"max(imagevault_rewrap_keys_done{{{SEL}}})", "keys done", "B")]),
        timeseries("Shred epoch",
                   [target(f"max(imagevault_shred_epoch_waiting_records{{{SEL}}})", "records waiting", "A"),
                    target(f"max(time() - imagevault_shred_epoch_last_completed_timestamp_seconds{{{SEL}}})",
                           "seconds since the last epoch", "B")]),
        timeseries("Records shredded",
                   [target(f"sum(increase(imagevault_records_shredded_total{{{SEL}}}[$__rate_interval]))", "shredded")]),
        timeseries("Audit head sequence",
                   [target(f"imagevault_audit_head_seq{{{SEL}}}", "{{instance}}")],
                   description="Grows with every audited request (ImageVaultAuditHeadStalled)."),
    ]


def layout(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grid positions and ids: rows full width; stats six across, graphs two across."""
    out, y, x, next_id, line_height = [], 0, 0, 1, 0
    for panel in items:
        panel = dict(panel, id=next_id)
        next_id += 1
        if panel["type"] == "row":
            y, x = y + line_height, 0
            panel["gridPos"] = {"h": 1, "w": WIDTH, "x": 0, "y": y}
            y, line_height = y + 1, 0
        else:
            w, h = (4, 4) if panel["type"] == "stat" else (12, 8)
            if x + w > WIDTH:
                y, x = y + line_height, 0
            panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            x, line_height = x + w, max(line_height, h)
        out.append(panel)
    return out


def dashboard() -> dict[str, Any]:
    variables = [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1},
        {"name": "job", "label": "Job", "type": "query", "datasource": DATASOURCE,
         "query": {"query": "label_values(imagevault_records, job)", "refId": "job"},
         "definition": "label_values(imagevault_records, job)", "current": {}, "refresh": 2, "hide": 0, "sort": 1},
        {"name": "instance", "label": "Instance", "type": "query", "datasource": DATASOURCE,
         "query": {"query": 'label_values(imagevault_records{job="$job"}, instance)', "refId": "instance"},
         "definition": 'label_values(imagevault_records{job="$job"}, instance)', "current": {}, "refresh": 2,
         "hide": 0, "includeAll": True, "multi": True, "allValue": ".*", "sort": 1},
    ]
    return {
        "uid": "imagevault", "title": "imagevault", "tags": ["imagevault"], "editable": True,
        "schemaVersion": 39, "version": 1, "timezone": "utc", "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"}, "graphTooltip": 1,
        "description": "Generated by deploy/grafana/build.py; edit that, not this file.",
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": layout(panels()),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--check"]:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
