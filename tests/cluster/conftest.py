"""Three real daemons on one PostgreSQL index, one SeaweedFS bucket and one OpenBao Transit key
(session servers of tests/conftest.py; a database, a bucket and a key of the module's own)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.cluster import Cluster, ClusterSettings

# Fast background jobs, so a take-over shows within seconds; no rendition decoders.
FAST_JOBS = {
    "IMAGEVAULT_AUDIT_WITNESS_INTERVAL": "1",
    "IMAGEVAULT_RENDITION_WORKERS": "0",
    "IMAGEVAULT_READINESS_INTERVAL": "0.5",
}


def cluster_settings(postgres, seaweed, openbao, dsn: str, bucket: str) -> ClusterSettings:  # type: ignore[no-untyped-def]
    key = "cluster-kek-" + secrets.token_hex(6)
    openbao.create_key(key)
    return ClusterSettings(postgres_dsn=dsn, s3=seaweed.environment(bucket), vault_addr=openbao.addr,
                           vault_token=openbao.root_token, vault_key=key, extra=dict(FAST_JOBS))


@pytest.fixture
def make_cluster(postgres, seaweed, openbao, tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """``make_cluster(size=3, pg=postgres, workers=1)`` -> a started ``Cluster`` of this test's own (a fresh
    database on ``pg``, a fresh bucket), stopped when the test ends."""
    made: list[Cluster] = []

    def make(size: int = 3, pg=None, workers: int = 1, **extra: str) -> Cluster:  # type: ignore[no-untyped-def]
        server = pg or postgres
        dsn = server.new_database()
        bucket = seaweed.lease_bucket()
        request.addfinalizer(lambda: seaweed.return_bucket(bucket))
        settings = cluster_settings(server, seaweed, openbao, dsn, bucket)
        settings.extra.update(extra)
        cluster = Cluster(tmp_path / f"cluster-{len(made)}", settings, size, workers=workers)
        made.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def cluster(make_cluster) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    yield make_cluster()
