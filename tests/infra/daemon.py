"""The real daemon and CLI as subprocesses, for tests and benchmarks.

``cli(data_dir, "token", "create", ...)`` runs one command; ``Daemon(data_dir, log)`` starts
``imagevault serve`` on a free loopback port and waits until it listens. ``env`` adds variables
(``IMAGEVAULT_STORE=s3`` and the S3 settings, for instance) to the inherited environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.infra.process import free_port

ROOT = Path(__file__).resolve().parent.parent.parent


def _environment(data_dir: Path, env: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "IMAGEVAULT_DATA_DIR": str(data_dir), **(env or {})}


def cli(data_dir: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vault.cli", *args], env=_environment(data_dir, env),
                          capture_output=True, text=True, check=check, timeout=timeout)


class Daemon:
    """``workers``: ``serve --workers`` (default 1: the single-process daemon). With more, the
    process is the parent; ``worker_pids`` lists its workers."""

    def __init__(self, data_dir: Path, log_path: Path, *, env: dict[str, str] | None = None, workers: int = 1,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.workers = workers
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vault.cli", "serve", "--listen", f"127.0.0.1:{self.port}", "--log-level", "DEBUG",
             "--workers", str(workers)],
            env=_environment(data_dir, env), stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=workers > 1,  # its own process group: a test can kill the whole daemon
        )
        if workers > 1:
            self._wait_for_log(f"{workers} workers listening", 60)
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"daemon exited early: {log_path.read_text()}")
                time.sleep(0.1)
        raise RuntimeError("daemon did not start listening")

    def _wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited early: {self.log_path.read_text()}")
            time.sleep(0.1)
        raise RuntimeError(f"daemon did not log {text!r}")

    def worker_pids(self) -> list[int]:
        """The parent's live children that serve (rendition decoders are their children)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def kill_group(self) -> None:
        """SIGKILL the parent and every worker at once (nothing flushes, nothing drains)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.log.close()

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field}")

    def peak_rss_mb(self) -> float:
        """VmHWM: the highest resident set size the process has had so far."""
        return self._status_kib("VmHWM") / 1024

    def rss_mb(self) -> float:
        return self._status_kib("VmRSS") / 1024

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.log.close()
        return code
