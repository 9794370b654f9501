"""Cluster crash harness: three daemons under concurrent writes on every node; each round one
node, picked at random, is SIGKILLed at a random moment and started again. After each round,
through a surviving node, checks as tests/crash_harness.py does: every acknowledged upload
reads back byte-identical with its acknowledged metadata, acknowledged deletes stay deleted,
unanswered uploads are absent or complete, and the audit chain (one chain for every node)
verifies.

tests/cluster/test_crash.py runs 6 rounds; ``make crash-test`` runs this as a script:

    python -m tests.cluster.harness --rounds 20 [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.crash_harness import Ledger, audit_ok, check, drive  # noqa: E402
from tests.infra.cluster import Cluster, ClusterSettings  # noqa: E402


async def run_rounds(cluster: Cluster, rounds: int, seed: int = 1, min_load: float = 0.5,
                     max_load: float = 2.0) -> dict[str, Any]:
    rng = random.Random(seed)
    token = cluster.token("dpo", "crash-writer")  # deletes are DPO overrides with a reason
    auditor = cluster.token("auditor", "crash-auditor")
    ledger = Ledger()
    totals: dict[str, Any] = {"rounds": 0, "acknowledged": 0, "acknowledged_writes_lost": 0, "resurrected": 0,
                              "half_visible": 0, "audit_broken": 0, "killed": []}
    for _ in range(rounds):
        stop = asyncio.Event()
        drivers = [asyncio.ensure_future(drive(url, token, ledger, random.Random(rng.random()), stop))
                   for url in cluster.urls]
        await asyncio.sleep(rng.uniform(min_load, max_load))
        victim = rng.randrange(len(cluster.nodes))
        cluster.kill(victim)
        await asyncio.sleep(0.3)  # the others go on writing while the victim is down
        stop.set()
        await asyncio.gather(*drivers, return_exceptions=True)
        survivor = cluster.node((victim + 1) % len(cluster.nodes)).url
        result = await check(survivor, token, ledger)
        totals["acknowledged_writes_lost"] += result["lost"]
        totals["resurrected"] += result["resurrected"]
        totals["half_visible"] += result["half_visible"]
        totals["audit_broken"] += not await audit_ok(survivor, auditor)
        cluster.start(victim)
        totals["rounds"] += 1
        totals["killed"].append(victim + 1)
    final = await check(cluster.node(0).url, token, ledger)
    totals["acknowledged_writes_lost"] += final["lost"]
    totals["resurrected"] += final["resurrected"]
    totals["half_visible"] += final["half_visible"]
    totals["audit_broken"] += not await audit_ok(cluster.node(0).url, auditor)
    totals["acknowledged"] = len(ledger.acked)
    totals["deleted"] = len(ledger.deleted)
    return totals


@dataclass
class Servers:
    postgres: Any  # tests.infra.postgres.PostgresServer
    seaweed: Any  # tests.infra.seaweed.SeaweedFS
    openbao: Any  # tests.infra.openbao.OpenBaoServer
    key: str  # the Transit key

    def settings(self) -> ClusterSettings:
        """A fresh database and a fresh bucket on these servers, the one Transit key."""
        return ClusterSettings(
            postgres_dsn=self.postgres.new_database(), s3=self.seaweed.environment(self.seaweed.lease_bucket(fresh=True)),
            vault_addr=self.openbao.addr, vault_token=self.openbao.root_token, vault_key=self.key,
            extra={"IMAGEVAULT_RENDITION_WORKERS": "0"},
        )


@contextlib.contextmanager
def servers(workdir: Path):  # type: ignore[no-untyped-def]
    """PostgreSQL, SeaweedFS and OpenBao for a run outside pytest; yields ``Servers``."""
    from tests.infra.openbao import OpenBaoServer, find_bao
    from tests.infra.postgres import PostgresServer, ensure_postgres
    from tests.infra.seaweed import SeaweedFS, find_weed

    bindir, weed, bao = ensure_postgres(), find_weed(), find_bao()
    if bindir is None or weed is None or bao is None:
        raise SystemExit("needs PostgreSQL (apt-get install postgresql), weed and bao (the test extra)")
    postgres = PostgresServer(bindir)
    (workdir / "s3").mkdir()
    (workdir / "bao").mkdir()
    seaweed = SeaweedFS(weed, workdir / "s3")
    openbao = OpenBaoServer(bao, workdir / "bao")
    try:
        seaweed.start()
        openbao.start()
        key = "cluster-kek-" + secrets.token_hex(4)
        openbao.create_key(key)
        yield Servers(postgres, seaweed, openbao, key)
    finally:
        openbao.stop()
        seaweed.close()
        postgres.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="SIGKILL crash harness for a three-daemon cluster")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workers", type=int, default=1, help="serve --workers of each node (a kill takes them all)")
    parser.add_argument("--out", default=None, help="results file (default bench/results/crash-cluster[-workers].json)")
    args = parser.parse_args()
    out = args.out or str(ROOT / "bench" / "results" /
                          ("crash-cluster.json" if args.workers == 1 else "crash-cluster-workers.json"))
    with tempfile.TemporaryDirectory() as tmp, servers(Path(tmp)) as running:
        cluster = Cluster(Path(tmp) / "cluster", running.settings(), 3, workers=args.workers)
        cluster.start()
        try:
            totals = asyncio.run(run_rounds(cluster, args.rounds, seed=args.seed))
        finally:
            cluster.stop()
    totals["seed"] = args.seed
    totals["workers_per_node"] = args.workers
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(totals, indent=2) + "\n")
    print(json.dumps(totals, indent=2))
    failed = totals["acknowledged_writes_lost"] or totals["half_visible"] or totals["audit_broken"] or totals["resurrected"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
