"""Clinic Wi-Fi in the locust scenario: uploads through a proxy that cuts connections, and the
count that says whether any image was stored twice or not at all.

The locust user ``FlakyNetworkRoom`` (bench/locustfile.py) sends each photograph of a session
with ``vault.client`` (an idempotency key per logical image, reused by every retry; resumable
tus uploads above ``TUS_THRESHOLD``) through a ``tests.infra.faultproxy`` process started here,
which cuts every connection at a random point of the requests (anywhere in an image body) or
of the answers (after the server has done the work: the case that used to duplicate records). Each logical image carries a marker tag (``img-<hex>``), and the user writes one
ledger line per image: its marker, its session, and what the client reported (the record id,
or the error after the client gave up; no line outcome if locust stopped the user mid-upload).

``verify`` then asks the daemon directly (not through the proxy) for every record of those
sessions and counts records per marker:

* ``duplicates``: records beyond the first of any logical image (goal 0);
* ``lost``: images the client reported stored (it returned a record) whose record is not
  there, plus images the client gave up on that have no record (goal 0); ``gave_up`` counts
  the images the client gave up on (its retries ran out) whether or not they were stored;
* ``unconfirmed``: images locust stopped mid-upload (stored or not: either is correct; only
  a second record would be an error, and that is counted in ``duplicates``).

    python -m bench.flaky --users 8 --seconds 120   # the whole scenario: bench/results/flaky_network.{json,md}
    python -m bench.flaky --selftest                # this user alone, tiny images (as make test runs it)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLAKY_TAG = "flaky-network"
MARKER_PREFIX = "img-"
TUS_THRESHOLD = 4 << 20  # about half the total-body images (2-8 MB) go through tus
# Every connection is cut (CUT_RATIO 1: with less, the first connection left uncut would carry
# the rest of the run, kept alive): half of them at a random point of the first
# REQUEST_CUT_SPAN bytes sent up (mid-upload), half within the first 2 KiB of answers (after
# the server has done the work: the case that duplicates records without idempotency).
CUT_RATIO = 1.0
REQUEST_CUT_SPAN = 16 << 20  # a few images: cuts land anywhere in an upload, tus or POST


def start_proxy(upstream_url: str, cut_ratio: float = CUT_RATIO, request_cut_span: int = REQUEST_CUT_SPAN,
                seed: int = 7) -> tuple[subprocess.Popen[str], str]:
    """A fault-injecting proxy in its own process (locust's gevent and asyncio do not mix)."""
    upstream = upstream_url.split("://", 1)[-1].rstrip("/")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.infra.faultproxy", "--upstream", upstream, "--cut-ratio", str(cut_ratio),
         "--request-cut-span", str(request_cut_span), "--seed", str(seed)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        raise RuntimeError("the fault proxy did not start")
    return process, url


def stop_proxy(process: subprocess.Popen[str]) -> dict[str, int]:
    """Stop the proxy; what it did (``connections``, ``cuts``), or {} if it could not say."""
    process.terminate()
    try:
        out, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return {}
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}


def proxy_stats_path(ledger: str | Path) -> Path:
    return Path(f"{ledger}.proxy.json")


def read_proxy_stats(ledger: str | Path) -> dict[str, int]:
    path = proxy_stats_path(ledger)
    return json.loads(path.read_text()) if path.exists() else {}


def metadata(base: dict[str, Any], marker: str) -> dict[str, Any]:
    """A logical image's metadata: the capture app's, tagged with its marker."""
    return {**base, "tags": [*base.get("tags", []), FLAKY_TAG, marker]}


def read_ledger(path: str | Path) -> list[dict[str, Any]]:
    """One entry per logical image: the last line written for each marker wins (``started``,
    then ``stored`` or ``gave_up``)."""
    entries: dict[str, dict[str, Any]] = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                entries[entry["marker"]] = {**entries.get(entry["marker"], {}), **entry}
    return list(entries.values())


async def verify(url: str, token: str, ledger: list[dict[str, Any]]) -> dict[str, Any]:
    """Records per logical image, straight from the daemon; see the module docstring."""
    from vault.client import AsyncClient

    found: dict[str, list[str]] = collections.defaultdict(list)
    async with AsyncClient(url, token=token) as client:
        for session in sorted({entry["session"] for entry in ledger}):
            async for record in client.search(session_id=session, tag=FLAKY_TAG, limit=1000):
                for tag in record.get("tags", []):
                    if tag.startswith(MARKER_PREFIX):
                        found[tag].append(record["id"])
    markers = {entry["marker"] for entry in ledger}
    stored = [e for e in ledger if e.get("outcome") == "stored"]
    gave_up = [e for e in ledger if e.get("outcome") == "gave_up"]
    unconfirmed = [e for e in ledger if "outcome" not in e]
    lost_stored = [e for e in stored if e["record"] not in found.get(e["marker"], [])]
    lost_gave_up = [e for e in gave_up if not found.get(e["marker"])]
    duplicates = sum(len(ids) - 1 for ids in found.values() if len(ids) > 1)
    return {
        "images": len(ledger), "stored": len(stored), "gave_up": len(gave_up), "unconfirmed": len(unconfirmed),
        "unconfirmed_stored": sum(1 for e in unconfirmed if found.get(e["marker"])),
        "records": sum(len(ids) for ids in found.values()),
        "duplicates": duplicates,
        "lost": len(lost_stored) + len(lost_gave_up),
        "unexpected_records": sum(len(ids) for marker, ids in found.items() if marker not in markers),
        "errors": sorted({e.get("error", "") for e in gave_up})[:5],
        "met": duplicates == 0 and not lost_stored and not lost_gave_up,
    }


def summarize(ledger: list[dict[str, Any]], counts: dict[str, Any], cuts: dict[str, Any] | None = None) -> dict[str, Any]:
    """``counts`` with how the images went (tus or POST) and what the proxy did (connections, cuts)."""
    done = [e for e in ledger if e.get("outcome") == "stored"]
    return {**counts, "tus_uploads": sum(1 for e in done if e.get("tus")), "post_uploads": sum(1 for e in done if not e.get("tus")),
                "bytes": sum(e.get("size", 0) for e in done), "proxy": cuts or {}}


def result(url: str, token: str, ledger_path: str | Path) -> dict[str, Any] | None:
    """The flaky-network counts of one locust run (None when the run had no such user)."""
    ledger = read_ledger(ledger_path)
    if not ledger:
        return None
    return summarize(ledger, asyncio.run(verify(url, token, ledger)), read_proxy_stats(ledger_path))


# a run of its own -------------------------------------------------------------------------------
def scenario(*, users: int, seconds: int, mixed: bool, small: bool, session: int | None = None) -> dict[str, Any]:
    """Locust against a fresh daemon, then ``verify``. ``mixed``: the whole clinic scenario
    (every user class of bench/locustfile.py, the flaky-network user among them), else the
    flaky-network user alone; ``small``: tiny images (the smoke run of ``make test``)."""
    from bench.peers import find_binary
    from tests.infra.daemon import Daemon, cli

    locust = find_binary("locust")
    if locust is None:
        raise RuntimeError("locust is not installed")
    if not small:  # made before the clock starts, as bench/run.py does (locust users would block on it)
        from bench.images import default_specs, ensure_images

        ensure_images(default_specs())
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        cli(data_dir, "init")
        token = cli(data_dir, "token", "create", "--tenant", "bench", "--role", "clinician", "--name", "flaky").stdout.strip()
        dpo = cli(data_dir, "token", "create", "--tenant", "bench", "--role", "dpo", "--name", "dpo").stdout.strip()
        daemon = Daemon(data_dir, Path(tmp) / "daemon.log")
        ledger_path = Path(tmp) / "flaky.jsonl"
        try:
            env = {**os.environ, "IV_TOKEN": token, "IV_DPO_TOKEN": dpo, "IV_FLAKY_LEDGER": str(ledger_path),
                   "PYTHONPATH": str(ROOT)}
            if small:
                env["IV_IMAGE_SMALL"] = "1"
            if session:
                env["IV_FLAKY_SESSION"] = str(session)
            started = time.time()
            done = subprocess.run(
                [locust, "-f", str(ROOT / "bench" / "locustfile.py"), *([] if mixed else ["FlakyNetworkRoom"]),
                 "--headless", "-u", str(users), "-r", str(max(1, users // 4)), "-t", f"{seconds}s",
                 "--host", daemon.url, "--only-summary", "--stop-timeout", "30", "--exit-code-on-error", "0"],
                check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 600,
            )
            if done.returncode != 0:
                raise RuntimeError(f"locust exited {done.returncode}: {done.stderr[-2000:]}")
            counts = result(daemon.url, token, ledger_path)
            if counts is None:
                raise RuntimeError(f"the flaky-network user uploaded nothing: {done.stderr[-2000:]}")
            return {**counts, "users": users, "seconds": seconds, "mixed": mixed,
                    "wall_s": round(time.time() - started, 1)}
        finally:
            daemon.stop()


def selftest(images: int = 12, seconds: int = 20) -> dict[str, Any]:
    """The flaky-network user alone, tiny images, short sessions: the whole path, small."""
    return scenario(users=1, seconds=seconds, mixed=False, small=True, session=images)


def summary(counts: dict[str, Any]) -> str:
    proxy = counts.get("proxy", {})
    return "\n".join([
        "# Flaky network (locust mixed traffic)", "",
        "| goal | measured | met |", "|---|---|---|",
        f"| duplicated images = 0 | {counts['duplicates']} | {'yes' if counts['duplicates'] == 0 else 'no'} |",
        f"| lost images = 0 | {counts['lost']} | {'yes' if counts['lost'] == 0 else 'no'} |", "",
        (f"{counts['images']} logical images ({counts['tus_uploads']} through tus, {counts['post_uploads']} POST, "
        f"{counts['bytes'] / 1e6:.0f} MB) in {counts['seconds']} s with {counts['users']} users "
        f"({'the whole clinic scenario' if counts['mixed'] else 'this user alone'}); the proxy cut "
        f"{proxy.get('cuts')} of {proxy.get('connections')} connections. {counts['gave_up']} images given up by "
        f"the client, {counts['unconfirmed']} cut short by the end of the run "
         f"({counts['unconfirmed_stored']} of them stored), {counts['records']} records."), "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--selftest", action="store_true", help="tiny images, this user alone")
    parser.add_argument("--users", type=int, default=8, help="locust users of the whole scenario")
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "flaky_network.json"))
    args = parser.parse_args()
    if args.selftest:
        print(json.dumps(selftest(seconds=min(args.seconds, 30)), indent=2))
        return 0
    from bench.results_file import write_result

    counts = scenario(users=args.users, seconds=args.seconds, mixed=True, small=False)
    write_result(args.out, {"benchmark": "flaky_network", **counts})
    Path(args.out).with_suffix(".md").write_text(summary(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
