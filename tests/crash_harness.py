"""Crash harness: drive the real daemon with concurrent writes and SIGKILL it at random moments.

Each round starts the daemon on the same data directory, runs concurrent uploads, deletes and
metadata updates for a random time, kills the daemon with SIGKILL (no chance to flush
anything), restarts it and checks:

- every acknowledged upload reads back byte-identical, with its acknowledged metadata;
- every acknowledged delete stays deleted (404);
- an upload whose answer never arrived is either absent or complete (never half-visible);
- an update whose answer never arrived shows either the old or the new value;
- the audit chain verifies.

Run as a script for the long version (``make crash-test``); tests/test_crash.py runs a few rounds.

    python tests/crash_harness.py --rounds 25
    python tests/crash_harness.py --rounds 20 --workers 2      # serve --workers 2, kills in turn:
                                                             # the whole group, then one worker
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import random_image, sample_metadata, upload_body  # noqa: E402
from tests.test_daemon import Daemon, cli  # noqa: E402


def payload(key: int) -> bytes:
    size = random.Random(key).choice([22, 23, 1000, 65536, 65537, 150_000, 400_000])
    return random_image(size, key)  # a JPEG head, then random bytes: uploads are checked against their type


@dataclass
class Ledger:
    """What the clients were told (acknowledged) and what was in flight when the daemon died."""

    # id -> {key, sha256, lesions}: ``lesions`` the lesion ids the record may now carry (one, or
    # several when acknowledged patches overlapped: their replies may come in another order than
    # their commits)
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    # sha256 -> how many uploads of those bytes are unanswered (payloads repeat, e.g. empty ones)
    in_flight_uploads: Counter[str] = field(default_factory=Counter)
    in_flight_deletes: set[str] = field(default_factory=set)
    in_flight_patches: dict[str, set[str]] = field(default_factory=dict)  # id -> possible lesions
    # id -> (lesion, tick of its reply) of acknowledged patches since the last check
    answered_patches: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    next_key: int = 0
    ticks: int = 0

    def tick(self) -> int:
        self.ticks += 1
        return self.ticks

    def patch_sent(self, record_id: str, lesion: str) -> int:
        """A PATCH of the record's lesion id is about to go out; returns its start tick."""
        self.in_flight_patches.setdefault(record_id, set()).add(lesion)
        return self.tick()

    def patch_answered(self, record_id: str, lesion: str, started: int) -> None:
        """The PATCH sent at ``started`` was acknowledged. A PATCH answered while this one was in
        flight may have committed after it, so either may be what the record now shows."""
        answered = self.answered_patches.setdefault(record_id, [])
        self.acked[record_id]["lesions"] = {lesion} | {other for other, at in answered if at > started}
        answered.append((lesion, self.tick()))
        self.in_flight_patches[record_id].discard(lesion)

    def lesions_allowed(self, record_id: str) -> set[str]:
        """What the record's lesion id may be now: an acknowledged value, or one still in flight."""
        return self.acked[record_id]["lesions"] | self.in_flight_patches.get(record_id, set())

    def settle(self, record_id: str, lesion: str) -> None:
        """After a check: the record shows ``lesion``, and nothing is in flight any more."""
        self.acked[record_id]["lesions"] = {lesion}
        self.in_flight_patches.pop(record_id, None)
        self.answered_patches.pop(record_id, None)


async def drive(url: str, token: str, ledger: Ledger, rng: random.Random, stop: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=30)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            choice = rng.random()
            live = [i for i in ledger.acked if i not in ledger.deleted and i not in ledger.in_flight_deletes]
            if choice < 0.6 or len(live) < 3:
                ledger.next_key += 1
                key = ledger.next_key
                data = payload(key)
                digest = hashlib.sha256(data).hexdigest()
                lesion = f"L-{key}"
                # Medical retention: nothing expires under the daemon's start-up sweep; deletes
                # are DPO overrides with a reason.
                meta = sample_metadata(lesion_id=lesion)
                ledger.in_flight_uploads[digest] += 1
                async with session.post(f"{url}/v1/images", data=upload_body(data, meta), headers=headers) as response:
                    body = await response.json()
                    assert response.status == 201, body
                ledger.acked[body["id"]] = {"key": key, "sha256": digest, "lesions": {lesion}}
                ledger.in_flight_uploads[digest] -= 1
            elif choice < 0.8:
                target = rng.choice(live)
                ledger.in_flight_deletes.add(target)
                async with session.delete(f"{url}/v1/images/{target}?override=true&reason=crash-test", headers=headers) as response:
                    assert response.status == 200, await response.text()
                ledger.deleted.add(target)
                ledger.in_flight_deletes.discard(target)
            else:
                target = rng.choice(live)
                lesion = f"P-{rng.randrange(1 << 30)}"
                started = ledger.patch_sent(target, lesion)
                async with session.patch(f"{url}/v1/images/{target}/metadata", json={"lesion_id": lesion}, headers=headers) as response:
                    if response.status == 404:  # deleted concurrently by another worker
                        continue
                    assert response.status == 200, await response.text()
                ledger.patch_answered(target, lesion, started)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        workers = [asyncio.ensure_future(worker(session)) for _ in range(8)]
        done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)):
                raise exc
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def audit_ok(url: str, auditor: str) -> bool:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v1/audit/verify", headers={"Authorization": f"Bearer {auditor}"}) as response:
            return response.status == 200 and (await response.json())["ok"] is True


async def check(url: str, token: str, ledger: Ledger) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {token}"}
    lost = 0
    resurrected = 0
    half_visible = 0
    checked = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for record_id, entry in list(ledger.acked.items()):
            async with session.get(f"{url}/v1/images/{record_id}", headers=headers) as response:
                body = await response.read()
                status = response.status
            if record_id in ledger.deleted:
                resurrected += status != 404
                continue
            if record_id in ledger.in_flight_deletes:
                if status == 404:  # the delete landed before the crash
                    ledger.deleted.add(record_id)
                ledger.in_flight_deletes.discard(record_id)
                if status == 404:
                    continue
            checked += 1
            if status != 200 or hashlib.sha256(body).hexdigest() != entry["sha256"]:
                lost += 1
                continue
            async with session.get(f"{url}/v1/images/{record_id}/metadata", headers=headers) as response:
                meta = await response.json()
            if meta["lesion_id"] not in ledger.lesions_allowed(record_id):
                lost += 1
                ledger.in_flight_patches.pop(record_id, None)
                ledger.answered_patches.pop(record_id, None)
            else:
                ledger.settle(record_id, meta["lesion_id"])
        # Records nobody was told about: must be complete uploads that were in flight.
        cursor = None
        while True:
            query: dict[str, Any] = {"limit": 1000}
            if cursor:
                query["cursor"] = cursor
            async with session.post(f"{url}/v1/search", json=query, headers=headers) as response:
                page = await response.json()
            for item in page["items"]:
                if item["id"] in ledger.acked:
                    continue
                unanswered = ledger.in_flight_uploads[item["sha256"]] > 0
                async with session.get(f"{url}/v1/images/{item['id']}", headers=headers) as response:
                    body = await response.read()
                if not unanswered or response.status != 200 or hashlib.sha256(body).hexdigest() != item["sha256"]:
                    half_visible += 1
                else:  # it landed: from now on it is an acknowledged record like the others
                    ledger.acked[item["id"]] = {"key": -1, "sha256": item["sha256"], "lesions": {item["lesion_id"]}}
            cursor = page["next_cursor"]
            if cursor is None:
                break
    ledger.in_flight_uploads.clear()
    return {"checked": checked, "lost": lost, "resurrected": resurrected, "half_visible": half_visible}


async def check_after_restart(daemon: Daemon, victim: int, url: str, token: str, ledger: Ledger,
                              auditor: str) -> dict[str, Any]:
    """After one worker of a ``--workers`` daemon was killed: the parent starts it again, and
    the daemon, still running, must show every acknowledged write and a verifying chain."""
    deadline = time.monotonic() + 60
    while victim in daemon.worker_pids() or len(daemon.worker_pids()) < daemon.workers:
        if time.monotonic() > deadline:
            raise RuntimeError("the killed worker was not started again")
        await asyncio.sleep(0.1)
    result = await check(url, token, ledger)
    result["audit_broken"] = not await audit_ok(url, auditor)
    return result


async def run_rounds(rounds: int, workdir: Path, seed: int = 1, min_load: float = 0.3, max_load: float = 1.5, *,
                     workers: int = 1, kill: str = "group") -> dict[str, Any]:
    """``workers`` > 1: the daemon runs ``--workers``; ``kill``: ``group`` (SIGKILL to every
    process at once), ``one`` (one worker; the daemon goes on and is checked live, then
    stopped) or ``mixed`` (the two in turn)."""
    rng = random.Random(seed)
    data_dir = workdir / "data"
    cli(data_dir, "init")
    token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "dpo", "--name", "crash").stdout.strip()
    auditor = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "auditor", "--name", "audit").stdout.strip()
    ledger = Ledger()
    totals = {"rounds": 0, "acknowledged_uploads": 0, "lost": 0, "resurrected": 0, "half_visible": 0, "audit_broken": 0}
    started = time.monotonic()
    for round_no in range(rounds):
        daemon = Daemon(data_dir, workdir / f"daemon-{round_no}.log", workers=workers)
        one = workers > 1 and (kill == "one" or (kill == "mixed" and round_no % 2 == 1))
        try:
            result = await check(daemon.url, token, ledger)
            for key in ("lost", "resurrected", "half_visible"):
                totals[key] += result[key]
            totals["audit_broken"] += not await audit_ok(daemon.url, auditor)
            stop = asyncio.Event()
            load = asyncio.ensure_future(drive(daemon.url, token, ledger, rng, stop))
            await asyncio.sleep(rng.uniform(min_load, max_load))
            if one:
                victim = rng.choice(daemon.worker_pids())
                os.kill(victim, signal.SIGKILL)
                stop.set()
                await load
                result = await check_after_restart(daemon, victim, daemon.url, token, ledger, auditor)
                for key in ("lost", "resurrected", "half_visible", "audit_broken"):
                    totals[key] += result[key]
                totals["workers_killed"] = totals.get("workers_killed", 0) + 1
                if daemon.stop() != 0:
                    raise RuntimeError("the daemon did not stop cleanly after a worker was killed")
            else:
                if workers > 1:
                    daemon.kill_group()
                else:
                    daemon.process.send_signal(signal.SIGKILL)
                    daemon.process.wait()
                stop.set()
                await load
        finally:
            if daemon.process.poll() is None:
                if workers > 1:
                    os.killpg(daemon.process.pid, signal.SIGKILL)
                daemon.process.kill()
                daemon.process.wait()
            daemon.log.close()
        totals["rounds"] += 1
    daemon = Daemon(data_dir, workdir / "daemon-final.log", workers=workers)
    try:
        result = await check(daemon.url, token, ledger)
        for key in ("lost", "resurrected", "half_visible"):
            totals[key] += result[key]
        totals["audit_broken"] += not await audit_ok(daemon.url, auditor)
    finally:
        assert daemon.stop() == 0
    totals["acknowledged_uploads"] = len(ledger.acked)
    totals["acknowledged_deletes"] = len(ledger.deleted)
    totals["acknowledged_writes_lost"] = totals["lost"] + totals["resurrected"]
    totals["seconds"] = round(time.monotonic() - started, 1)
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description="SIGKILL crash harness")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workers", type=int, default=1, help="serve --workers (default 1)")
    parser.add_argument("--kill", choices=("group", "one", "mixed"), default="mixed",
                        help="with --workers > 1: SIGKILL every process, one worker, or the two in turn")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = args.out or str(ROOT / "bench" / "results" / ("crash.json" if args.workers == 1 else "crash-workers.json"))
    with tempfile.TemporaryDirectory() as tmp:
        totals = asyncio.run(run_rounds(args.rounds, Path(tmp), seed=args.seed, workers=args.workers, kill=args.kill))
    totals["seed"] = args.seed
    totals["workers"] = args.workers
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(totals, indent=2) + "\n")
    print(json.dumps(totals, indent=2))
    failed = totals["acknowledged_writes_lost"] or totals["half_visible"] or totals["audit_broken"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
