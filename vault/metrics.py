"""Prometheus metrics, one registry per service instance (tests run several side by side).

Label values are always from closed sets (route templates, status codes, error kinds): never
a record id, a token name or anything a client typed, so no personal data can reach /metrics.

Under ``serve --workers N`` (``use_worker_files``, called in each worker before its metrics are
made) every value lives in the worker's own files of a per-run directory (prometheus_client's
multiprocess mode), and ``render`` merges the files of all workers, so one scrape of any
worker shows the whole daemon: counters and histograms summed (a dead worker's files stay, so
totals never go backwards), gauges each by its ``multiprocess_mode``: ``livesum`` for what
each worker holds (connections, uploads, its rendition queue), ``livemostrecent`` for facts
about the data directory that any worker may measure, ``livemax`` for the audit head's
sequence number. The KMS call counters are mirrored into such counters, the record count and
audit head are read from the index at each scrape (``before_render``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest, values
from prometheus_client.core import CounterMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_WALK_BUCKETS = (0, 10, 100, 1000, 5000, 10_000, 20_000, 50_000, 100_000)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1)
# Set by use_worker_files: the per-run directory of the workers' metric files.
_worker_files: Path | None = None


def _mode(multiprocess_mode: str) -> Any:
    """A gauge's merge mode among workers; "all" (unused) in a single process, where a
    "mostrecent" mode would refuse ``inc`` and ``dec``."""
    return multiprocess_mode if _worker_files is not None else "all"


def use_worker_files(directory: Path) -> None:
    """Keep this process's metric values in ``directory``, merged with the other workers' on
    render. Call once per worker process, before any ``Metrics`` is made."""
    global _worker_files
    _worker_files = directory
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # where prometheus_client writes them
    values.ValueClass = values.MultiProcessValue()


def prepare_worker_files(directory: Path) -> None:
    """Before the workers start: an empty directory (a previous run's files would add up)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for leftover in directory.glob("*.db"):
        leftover.unlink()


def forget_worker(directory: Path, pid: int) -> None:
    """A worker died: drop its live gauges (connections it no longer holds); its counters and
    histograms stay, so totals do not go backwards."""
    mark_process_dead(pid, str(directory))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.worker_files = _worker_files
        # Called before each render when workers share the metrics: refresh what is read from
        # disk rather than counted (the record count, the audit head).
        self.before_render: list[Callable[[], None]] = []
        self._kms_seen: dict[tuple[str, str], int] = {}
        r = self.registry
        self.requests = Counter(
            "imagevault_http_requests", "HTTP requests by route template, method and status",
            ["route", "method", "status"], registry=r,
        )
        self.latency = Histogram(
            "imagevault_http_request_seconds", "HTTP request latency by route template and method",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.bytes_stored = Counter(
            "imagevault_bytes_stored", "Plaintext image bytes accepted and stored", registry=r,
        )
        self.bytes_served = Counter(
            "imagevault_bytes_served", "Plaintext image bytes served", registry=r,
        )
        self.records = Gauge("imagevault_records", "Records in the index", registry=r, multiprocess_mode=_mode("livemostrecent"))
        self.commit_latency = Histogram(
            "imagevault_lmdb_commit_seconds", "LMDB group commit latency (one fsync each)",
            buckets=_COMMIT_BUCKETS, registry=r,
        )
        self.commit_batch = Histogram(
            "imagevault_lmdb_commit_batch_size", "Operations per LMDB group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r,
        )
        self.integrity_errors = Counter(
            "imagevault_integrity_errors", "Blobs that failed authentication when read", registry=r,
        )
        self.index_integrity_errors = Counter(
            "imagevault_index_integrity_errors",
            "Index values that failed authentication, by kind (record, token, key)", ["kind"], registry=r,
        )
        self.scrub_corrupt = Gauge(
            "imagevault_scrub_corrupt_blobs", "Blobs found corrupt or missing by the last scrub", registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        self.scrub_last_completed = Gauge(
            "imagevault_scrub_last_completed_timestamp_seconds", "When the last scrub (imagevault verify) completed",
            registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        self.shredded = Counter("imagevault_records_shredded", "Records crypto-shredded", registry=r)
        self.renditions_made = Counter(
            "imagevault_renditions_made", "Records whose thumbnail and preview were made and stored", registry=r,
        )
        self.rendition_failures = Counter(
            "imagevault_rendition_failures", "Rendition jobs failed for good, by reason code", ["reason"], registry=r,
        )
        self.rendition_backlog = Gauge(
            "imagevault_rendition_backlog", "Rendition jobs queued and not yet done", registry=r, multiprocess_mode=_mode("livesum"),
        )
        self.rendition_seconds = Histogram(
            "imagevault_rendition_seconds", "Time to make one record's renditions (decrypt to stored)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.dek_cache = Counter(
            "imagevault_dek_cache", "Data key cache lookups by result", ["result"], registry=r,
        )
        self.dek_cache_keys = Gauge(
            "imagevault_dek_cache_keys", "Unwrapped data keys held in memory now", registry=r,
            multiprocess_mode=_mode("livesum"),
        )
        self.connections_open = Gauge(
            "imagevault_connections_open", "Client connections open now (HTTP and HTTPS)", registry=r, multiprocess_mode=_mode("livesum"),
        )
        # reason: header_timeout | connection_cap | slow_upload (a closed set, docs/api.md).
        self.connections_evicted = Counter(
            "imagevault_connections_evicted", "Connections cut off or refused to protect the others, by reason",
            ["reason"], registry=r,
        )
        self.uploads_in_flight = Gauge(
            "imagevault_uploads_in_flight", "Uploads currently streaming", registry=r, multiprocess_mode=_mode("livesum"),
        )
        self.audit_head = Info(
            "imagevault_audit_head", "Head of the audit hash chain (sequence and hash), for external witnesses",
            registry=r,
        )
        self.audit_head_seq = Gauge("imagevault_audit_head_seq", "Sequence number of the audit chain's head", registry=r, multiprocess_mode=_mode("livemax"))
        self.rewrap_progress = Gauge(
            "imagevault_rewrap_progress", "Fraction of wrapped keys moved to the current KEK version", registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        self.epoch_last = Gauge(
            "imagevault_shred_epoch_last", "Number of the last completed shred epoch (0: none yet)", registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        self.epoch_last_completed = Gauge(
            "imagevault_shred_epoch_last_completed_timestamp_seconds", "When the last shred epoch completed",
            registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        self.epoch_waiting = Gauge(
            "imagevault_shred_epoch_waiting_records",
            "Records shredded since the last shred epoch began: recoverable with the key files until the next one",
            registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        self.epoch_due = Gauge("imagevault_shred_epoch_due", "1 while a shred epoch is due", registry=r, multiprocess_mode=_mode("livemostrecent"))
        self.unreadable_records = Counter(
            "imagevault_unreadable_records", "Records left out of a search page because their data key would not unwrap",
            registry=r,
        )
        self.loop_lag = Histogram(
            "imagevault_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled periodically): the wait every request shares",
            buckets=_LAG_BUCKETS, registry=r,
        )
        self.search_walked = Histogram(
            "imagevault_search_entries_walked", "Index entries one search call walked (bounded by search_scan_budget)",
            buckets=_WALK_BUCKETS, registry=r,
        )
        # Sampled on the readiness timer (readiness_interval), not per scrape.
        self.data_dir_free = Gauge(
            "imagevault_data_dir_free_bytes", "Bytes free for the daemon on the data directory's file system",
            registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        self.data_dir_size = Gauge(
            "imagevault_data_dir_size_bytes", "Size of the data directory's file system in bytes", registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        # environment: index | audit (the two LMDB environments of the data directory).
        self.map_used = Gauge(
            "imagevault_lmdb_map_used_ratio",
            "Fraction of the LMDB map in use; the map doubles when full, which needs that much more disk",
            ["environment"], registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        self.map_size = Gauge(
            "imagevault_lmdb_map_size_bytes", "LMDB map size in bytes", ["environment"], registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        self.rewrap_running = Gauge(
            "imagevault_rewrap_running", "1 while a rewrap job (after a key rotation) is unfinished", registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        self.rewrap_done = Gauge(
            "imagevault_rewrap_keys_done",
            "Wrapped keys the unfinished rewrap job has moved so far (by any process; 0 when none runs)",
            registry=r, multiprocess_mode=_mode("livemostrecent"),
        )
        self.rejected_uploads = Counter(
            "imagevault_uploads_rejected", "Uploads refused before storing, by error code",
            ["code"], registry=r,
        )

    def watch_key_provider(self, provider: Any) -> None:
        """Export the provider's own call and error counters (kinds are a closed set)."""
        if self.worker_files is None:
            self.registry.register(_KeyProviderCollector(provider))
            return
        self._kms_provider = provider
        self._kms_calls = Counter("imagevault_kms_calls", "Calls made to the KMS by kind", ["kind"], registry=None)
        self._kms_errors = Counter("imagevault_kms_errors", "KMS errors by kind", ["kind"], registry=None)

    def sync(self) -> None:
        """Workers only: copy the KMS provider's counters into this worker's metric files (what
        changed since the last call), so that every worker's scrape shows every worker's calls."""
        provider = getattr(self, "_kms_provider", None)
        if provider is None:
            return
        for family, counter in (("calls", self._kms_calls), ("errors", self._kms_errors)):
            for kind, count in list(getattr(provider, family, {}).items()):
                seen = self._kms_seen.get((family, kind), 0)
                if count > seen:
                    counter.labels(kind).inc(count - seen)
                    self._kms_seen[(family, kind)] = count

    def changed_records(self, delta: int) -> None:
        """Records were added (positive) or shredded. Workers re-read the count at each scrape
        instead: each sees only its own changes."""
        if self.worker_files is None:
            self.records.inc(delta)

    def observe_commit(self, seconds: float, operations: int) -> None:
        self.commit_latency.observe(seconds)
        self.commit_batch.observe(operations)

    def render(self) -> bytes:
        if self.worker_files is None:
            return generate_latest(self.registry)
        for refresh in self.before_render:
            refresh()
        self.sync()
        merged = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(merged, str(self.worker_files))
        # Info has no multiprocess form; it is per process and refreshed just before (the head).
        local = CollectorRegistry(auto_describe=True)
        local.register(_Only(self.audit_head))
        return generate_latest(merged) + generate_latest(local)


class _KeyProviderCollector(Collector):
    def __init__(self, provider: Any) -> None:
        self._provider = provider

    def collect(self) -> Any:
        calls = CounterMetricFamily("imagevault_kms_calls", "Calls made to the KMS by kind", labels=["kind"])
        errors = CounterMetricFamily("imagevault_kms_errors", "KMS errors by kind", labels=["kind"])
        for kind, count in sorted(getattr(self._provider, "calls", {}).items()):
            calls.add_metric([kind], count)
        for kind, count in sorted(getattr(self._provider, "errors", {}).items()):
            errors.add_metric([kind], count)
        yield calls
        yield errors


class _Only(Collector):
    """One metric of a registry, to render it on its own."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric

    def collect(self) -> Any:
        return self._metric.collect()
