"""The benchmark code runs: the driver against an in-process daemon and sink, the report renders.

Only that the code works end to end (so it cannot rot between benchmark runs): no performance
assertion here, ever — numbers on a shared 2-core machine mean nothing in a unit test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import driver, images, micro, peers, report, run, s3, sink, workers  # noqa: F401 - importable
from vault.api.app import create_app


@pytest.fixture(scope="module")
def small_images(tmp_path_factory) -> list[bytes]:
    cache = tmp_path_factory.mktemp("bench-images")
    made = images.ensure_images(images.small_specs(3), cache, progress=False)
    assert all(i.size > 10_000 for i in made)
    again = images.ensure_images(images.small_specs(3), cache, progress=False)  # from the cache
    assert [i.sha256 for i in again] == [i.sha256 for i in made]
    return [i.read() for i in made]


def test_generated_images_are_jpegs_with_gps_exif(small_images):
    from PIL import Image
    import io

    picture = Image.open(io.BytesIO(small_images[0]))
    assert picture.format == "JPEG" and picture.size == (640, 480)
    exif = picture.getexif()
    assert exif.get_ifd(0x8825), "GPS IFD present"


def test_locustfile_imports_and_builds_api_shaped_bodies():
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is in the bench extra (make bench installs it)")
    # In a subprocess: importing locust monkey-patches the standard library (gevent).
    script = (
        "from bench import locustfile as l\n"
        "body, ctype = l.multipart({'patient_id': 'x'}, b'\\xff\\xd8jpeg')\n"
        "b = ctype.split('boundary=')[1]\n"
        "assert body.index(b'name=\"metadata\"') < body.index(b'name=\"file\"')\n"
        "assert body.endswith(('--' + b + '--\\r\\n').encode())\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=peers.ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(peers.ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


async def test_driver_uploads_and_downloads_through_an_in_process_daemon(aiohttp_server, service, small_images):
    from vault.auth import Role

    server = await aiohttp_server(create_app(service.config, vault=service))
    token, _ = await service.tokens.create("bench-clinic", Role.CLINICIAN, "bench")
    dpo, _ = await service.tokens.create("bench-clinic", Role.DPO, "bench-dpo")
    target = driver.VaultTarget(str(server.make_url("")), token, "imagevault", dpo_token=dpo)
    up = await driver.upload_phase(target, small_images, concurrency=4, duration=2.0)
    assert not up.errors and up.keys and up.payload_bytes > 0
    down = await driver.download_phase(target, up.keys, concurrency=4, duration=1.0)
    assert not down.errors and down.requests
    ranged = await driver.download_phase(target, up.keys, concurrency=2, count=3, range_bytes=1000)
    assert not ranged.errors and all(r.size == 1000 for r in ranged.requests)
    await driver.delete_all(target, up.keys)
    assert service.count_records() == 0
    summary = up.summary()
    assert summary["requests"] == len(up.keys) and summary["p99_ms"] is not None


async def test_driver_against_the_in_process_sink(aiohttp_server, tmp_path, small_images):
    server = await aiohttp_server(sink.create_app(tmp_path / "sink"))
    target = driver.SinkTarget(str(server.make_url("")))
    up = await driver.upload_phase(target, small_images, concurrency=3, count=6)
    assert not up.errors and len(up.keys) == 6
    stored = sorted(p.stat().st_size for p in (tmp_path / "sink" / "blobs").iterdir())
    assert stored == sorted(len(small_images[i % 3]) for i in range(6))
    down = await driver.download_phase(target, up.keys, concurrency=3)
    assert not down.errors and down.payload_bytes == up.payload_bytes


def test_report_renders_goals_tables_and_timeseries(tmp_path):
    phase = {"median_mb_s": 100.0, "median_p99_ms": 50.0, "server_cpu_s_per_gb": 3.0, "client_cpu_s_per_gb": 1.0,
             "rounds": [{"round": 0, "mb_s": 100.0}]}
    result = {
        "name": "smoke", "quick": True, "concurrency": 4,
        "profile": run.QUICK.__dict__, "environment": {"commit": "x", "load_average": [1.0], "load_average_end": [1.0]},
        "images": {"total_body": 1, "sizes_mb": [2.0], "total_body_mb": 2.0},
        "throughput": {kind: {name: dict(phase) for name in ("disk-ceiling", "seaweedfs-s3", "imagevault-local",
                                                               "imagevault-transit")} for kind in ("upload", "download")},
        # The ceiling with the mandatory hashing and AES-GCM is upload-only (it stores ciphertext).
        "kms": {"transit_calls_per_image": 0.01, "transit_calls_total": 1, "transit_images": 100,
                "transit_calls_by_kind": {"encrypt": 1}},
        "latency": {"image_bytes": 4_000_000, "concurrency": 4, "targets": {"imagevault-local": {
            "uploads": 4, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "max_ms": 3.0}}},
    }
    started = 1000.0
    requests = [{"t": started + i, "name": "POST /v1/images [total body]", "ms": 500.0, "up": 4_000_000, "down": 0, "ok": True}
                for i in range(12)] + [{"t": started + 3, "name": "GET /v1/images/{id}", "ms": 20.0, "up": 0,
                                        "down": 1_000_000, "ok": True}]
    result["throughput"]["upload"]["disk-ceiling+2sha256+aesgcm"] = dict(phase)
    series = run.timeseries(requests, started)
    assert abs(sum(series["upload_mb_s"]) * series["bucket_seconds"] - 48.0) < 0.01
    result["locust"] = {"imagevault-local": {"users": 2, "seconds": 12, "stats": [], "server_cpu_s": 1.0, "timeseries": series}}
    result["goals"] = run.goals(result)
    assert [g["met"] for g in result["goals"][:6]] == [True, True, True, True, True, True]
    names = [g["goal"] for g in result["goals"]]
    assert "upload server CPU s/GB vs the ceiling doing 2x SHA-256 + AES-GCM" in names
    assert "download server CPU s/GB vs SeaweedFS S3" in names
    path = report.write(result, tmp_path)
    text = path.read_text()
    assert "## Goals" in text and "imagevault-local" in text
    json.dumps(result)  # the result is plain JSON


def test_peer_launchers_find_their_binaries_or_say_so():
    # The servers themselves are exercised by bench/run.py; here only what needs no process.
    assert peers.free_port() > 0
    assert len(set(peers.free_ports(5))) == 5
    headers = s3.S3Client("http://127.0.0.1:1", "ak", "sk").signed_headers("PUT", "/b/k")
    assert headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD" and headers["Authorization"].startswith("AWS4-HMAC-SHA256")
    assert Path(peers.ROOT, "bench", "locustfile.py").exists()


def test_seal_open_micro_benchmark_runs_on_the_current_chunk_size():
    """It opens what the sealer wrote chunk by chunk: it must follow the format's chunk size."""
    result = micro.seal_open(size_mib=2, repeat=1)
    assert result["chunk_kib"] == (1 << micro.DEFAULT_CHUNK_EXP) // 1024
    assert result["seal_mb_s"] > 0 and result["open_mb_s"] > 0


def test_slow_clients_benchmark_runs_and_reports_evictions(tmp_path):
    out = tmp_path / "slow.json"
    subprocess.run([sys.executable, "bench/slow_clients.py", "--quick", "--out", str(out)], check=True,
                   cwd=Path(__file__).resolve().parent.parent, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["with_trickling_clients"]["healthz"]["n"] == 30
    assert result["evictions_metric"]["header_timeout"] >= 50


async def test_loop_lag_bench_runs_at_a_small_size(tmp_path):
    import argparse

    from bench import loop_lag

    args = argparse.Namespace(records=300, seconds=0.5, searchers=1)
    result = await loop_lag.serve_and_measure(args, tmp_path / "data")
    assert result["records"] == 300 and result["research_consented"] == 0
    scenarios = result["scenarios"]
    assert set(scenarios) == {"idle", *(name for name, _, _ in loop_lag.SCENARIOS)}
    assert all(s["search_calls"] > 0 for name, s in scenarios.items() if name != "idle")
    assert scenarios["idle"]["healthz_ms"]["n"] > 0 and scenarios["idle"]["loop_lag_ms"]["n"] > 0


def test_workers_bench_runs_one_and_two_workers_and_writes_its_report(tmp_path):
    out = tmp_path / "workers.json"
    done = subprocess.run(
        [sys.executable, "bench/workers.py", "--files", "4", "--size", "4", "--concurrency", "2", "--repeat", "1",
         "--out", str(out)],
        cwd=peers.ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(peers.ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["workers"] for r in result["runs"]] == [1, 2]
    assert all(r["up_cpu_s_per_gb"] > 0 and r["down_mb_s"] > 0 for r in result["runs"])
    assert "| 2 |" in out.with_suffix(".md").read_text()


def test_flaky_network_user_stores_every_image_exactly_once():
    """The locust flaky-network user, small: real locust, real daemon, a proxy cutting every
    connection; the count over the daemon's records finds no duplicate and no lost image."""
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is in the bench extra (make bench installs it)")
    from bench import flaky

    counts = flaky.selftest(images=8, seconds=15)
    assert counts["images"] >= 3 and counts["stored"] + counts["gave_up"] + counts["unconfirmed"] == counts["images"]
    assert counts["tus_uploads"] and counts["post_uploads"]  # both paths of the client
    assert counts["proxy"]["cuts"] >= 1  # the network really was flaky
    assert counts["duplicates"] == 0 and counts["lost"] == 0 and counts["met"], counts


async def test_flaky_network_count_finds_duplicated_and_lost_images(aiohttp_server, service, small_images):
    """The count can fail: an image stored twice and one reported stored but absent are found."""
    from bench import flaky
    from vault.auth import Role
    from vault.client import AsyncClient

    server = await aiohttp_server(create_app(service.config, vault=service))
    token, _ = await service.tokens.create("bench-clinic", Role.CLINICIAN, "bench")
    url = str(server.make_url("")).rstrip("/")
    base = driver.clinical_metadata(patient=1, session_id="FN-count")
    async with AsyncClient(url, token=token) as client:
        once = await client.upload(small_images[0], flaky.metadata(base, "img-once"), content_type="image/jpeg")
        twice = [await client.upload(small_images[1], flaky.metadata(base, "img-twice"), content_type="image/jpeg")
                 for _ in range(2)]  # two calls: two keys, as a client without idempotency would
    ledger = [
        {"marker": "img-once", "session": "FN-count", "outcome": "stored", "record": once["id"]},
        {"marker": "img-twice", "session": "FN-count", "outcome": "stored", "record": twice[1]["id"]},
        {"marker": "img-lost", "session": "FN-count", "outcome": "stored", "record": "0" * 26},
        {"marker": "img-gone", "session": "FN-count", "outcome": "gave_up", "error": "TransportFailed"},
        {"marker": "img-cut", "session": "FN-count"},
    ]
    counts = await flaky.verify(url, token, ledger)
    assert counts["duplicates"] == 1 and counts["lost"] == 2 and counts["records"] == 3
    assert counts["gave_up"] == 1 and counts["unconfirmed"] == 1 and not counts["met"]


def test_renditions_benchmark_reports_the_cpu_split():
    from bench import renditions

    result = renditions.bench_cpu(renditions.photo(1200, 800), repeat=1)
    assert set(result["split_cpu_ms_median"]) == {"decrypt", "decode", "resize", "colour", "encode", "seal"}
    assert result["thumbnail_bytes"] > 0 and result["preview_bytes"] > 0
