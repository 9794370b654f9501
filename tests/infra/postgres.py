"""A real PostgreSQL server on loopback for the tests of the PostgreSQL index engine.

The server is Debian's (package ``postgresql``; ``.ci/run`` and ``ensure_postgres`` install it
where apt is there), run from its binaries with ``initdb``/``pg_ctl`` on a throwaway cluster
in a temporary directory. PostgreSQL refuses to run as root, so under root the cluster belongs to
the ``postgres`` user the package creates and its programs run through ``runuser``.

The cluster is made for tests: ``fsync`` and ``full_page_writes`` are off (the machine does not
lose power under a test), but every commit still reaches the WAL before it is acknowledged, so a
server killed with ``stop()`` (immediate mode, a crash) keeps every acknowledged write. Each
test gets a database of its own (``new_database``); the password authenticates over TCP
(scram-sha-256), so every DSN carries a password as a real one would.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.infra.process import free_port

USER = "iv"


def find_pg_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: PATH, ``pg_config --bindir`` or Debian's."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return Path(candidate)
    return None


def ensure_postgres() -> Path | None:
    """The binaries, installed from Debian's packages first when missing and we are root."""
    found = find_pg_bin()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], capture_output=True, check=False)
        found = find_pg_bin()
        if found is None:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
            subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], capture_output=True, check=False)
            found = find_pg_bin()
    return found


class PostgresServer:
    """One cluster: ``start()``/``stop()`` (for outage tests), a superuser DSN, fresh databases."""

    def __init__(self, bindir: Path, root: Path | None = None, port: int | None = None) -> None:
        """``root``: a lasting cluster there (``make run-cluster``), made on first use and kept,
        durable (fsync on), its password in ``root/password`` (0600); by default a throwaway
        one in a temporary directory."""
        self.bindir = bindir
        self.persistent = root is not None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="iv-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            owner = "postgres"
            try:
                pwd.getpwnam(owner)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", owner], check=True)
            self._as_user = ["runuser", "-u", owner, "--"]
        saved = self.root / "password"
        if self.persistent and (self.data / "PG_VERSION").exists():
            self.password = saved.read_text().strip()
            self.port = int((self.root / "port").read_text())
            self.start()
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(18)
        if self.persistent:
            fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.password)
            (self.root / "port").write_text(str(self.port))
        if self._as_user:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self._as_user:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(bindir / "initdb"), "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C")
        pwfile.unlink()
        # A test cluster skips fsync (the machine does not lose power under a test); a lasting one keeps it.
        durability = "" if self.persistent else "fsync = off\nfull_page_writes = off\n"
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                f"{durability}max_connections = 400\nshared_buffers = 64MB\n"
            )
        self.start()

    def _run(self, *cmd: str) -> None:
        result = subprocess.run([*self._as_user, *cmd], capture_output=True, text=True, check=False)
        if result.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {result.stderr.strip() or result.stdout.strip()}")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def new_database(self, **settings: str) -> str:
        """A fresh database (its DSN), with per-database settings (e.g. ``log_statement``)."""
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
            for key, value in settings.items():
                conn.execute(f"ALTER DATABASE {name} SET {key} = '{value}'")
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def pg_dump(self, dsn: str) -> bytes:
        result = subprocess.run([str(self.bindir / "pg_dump"), "--no-owner", dsn], capture_output=True, check=True)
        return result.stdout

    def log_text(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """The DSN of database ``name``, created if it does not exist."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def close(self) -> None:
        if self.persistent:  # stopped cleanly, and kept
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            return
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
