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

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="iv-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            owner = "postgres"
            try:
                pwd.getpwnam(owner)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", owner], check=True)
            shutil.chown(self.root, owner, owner)
            self._as_user = ["runuser", "-u", owner, "--"]
        self.root.chmod(0o700)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self._as_user:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(bindir / "initdb"), "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C")
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                "fsync = off\nfull_page_writes = off\nmax_connections = 400\n"
                "shared_buffers = 64MB\n"
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

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
