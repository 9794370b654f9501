"""Several real daemons on one PostgreSQL index, one S3 bucket and one Transit key.

Used by the cluster tests (tests/cluster/), bench/cluster.py and ``make run-cluster``
(scripts/run_cluster.py). Each daemon has a data directory of its own (its run directory, its
data directory lock, its logs); what they share is everything that holds records: the index
(PostgreSQL), the blobs (the bucket) and the key-encryption key (the Transit key: a local
keyring lives in one data directory, so only a KMS gives every node the same KEK).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

from tests.infra.daemon import Daemon, cli


@dataclass
class ClusterSettings:
    """The shared components, as the environment every node gets."""

    postgres_dsn: str
    s3: dict[str, str]  # SeaweedFS.environment(bucket)
    vault_addr: str
    vault_token: str
    vault_key: str
    extra: dict[str, str] = field(default_factory=dict)  # e.g. faster job intervals for tests

    def environment(self) -> dict[str, str]:
        return {
            "IMAGEVAULT_INDEX": "postgres",
            "IMAGEVAULT_POSTGRES_DSN": self.postgres_dsn,
            "IMAGEVAULT_KMS": "transit",
            "IMAGEVAULT_VAULT_ADDR": self.vault_addr,
            "IMAGEVAULT_VAULT_TOKEN": self.vault_token,
            "IMAGEVAULT_VAULT_KEY": self.vault_key,
            **self.s3,
            **self.extra,
        }


class Cluster:
    """``size`` daemons under ``root`` (``root/node-N/data``, ``root/node-N.log``)."""

    def __init__(self, root: Path, settings: ClusterSettings, size: int = 3, *, workers: int = 1,
                 ports: list[int] | None = None) -> None:
        self.root = root
        self.settings = settings
        self.env = settings.environment()
        self.workers = workers
        self.data_dirs = [root / f"node-{n + 1}" / "data" for n in range(size)]
        self.nodes: list[Daemon | None] = [None] * size
        self._ports = ports
        for data_dir in self.data_dirs:
            cli(data_dir, "init", env=self.env)

    def start(self, n: int | None = None) -> None:
        """Start node ``n`` (0-based), or every node that is not running."""
        for i in range(len(self.nodes)) if n is None else [n]:
            node = self.nodes[i]
            if node is not None and node.process.poll() is None:
                continue
            port = None if self._ports is None else self._ports[i]
            if node is not None:
                port = node.port  # a restarted node keeps its address
            self.nodes[i] = Daemon(self.data_dirs[i], self.root / f"node-{i + 1}.log", env=self.env,
                                   workers=self.workers, port=port)

    def node(self, n: int) -> Daemon:
        node = self.nodes[n]
        assert node is not None
        return node

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes if node is not None]

    def token(self, role: str = "clinician", name: str = "cluster", tenant: str = "clinic-a") -> str:
        """A token, created through node 1's CLI: the token store is the shared index."""
        return cli(self.data_dirs[0], "token", "create", "--tenant", tenant, "--role", role, "--name", name,
                   env=self.env).stdout.strip()

    def cli(self, n: int, *args: str, check: bool = True) -> str:
        return cli(self.data_dirs[n], *args, env=self.env, check=check).stdout

    def kill(self, n: int) -> None:
        """SIGKILL node ``n`` (every process of it): nothing flushes, nothing drains."""
        node = self.node(n)
        if self.workers > 1:
            node.kill_group()
        else:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=30)
            node.log.close()

    def log_text(self, n: int) -> str:
        return (self.root / f"node-{n + 1}.log").read_text(errors="replace")

    def stop(self) -> None:
        for node in self.nodes:
            if node is not None and node.process.poll() is None:
                node.stop()
