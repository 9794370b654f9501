"""``imagevault serve --workers N``: N worker processes serving one listening socket.

A parent process owns what there must be one of, and forks workers that each run their own
event loop and ``Vault`` on the same data directory (LMDB serialises the workers' group
commits; background jobs elect one leader each, ``vault.services.leases``).

The parent, before any worker exists:

- takes the data directory's daemon lock (``lock_data_dir``), so a second ``serve`` on the
  directory is refused as before. The workers inherit the locked descriptor: a fork shares the
  open file and with it the ``flock``, so they open the directory without locking it again,
  and the lock stays held while any worker lives, even if the parent is killed;
- binds the listening socket once. Every worker accepts from that one socket (one kernel
  accept queue): a worker that dies leaves queued connections to the others, a restarted
  worker needs no bind, and an address in use is refused exactly as a single daemon refuses
  it. (``SO_REUSEPORT`` with a socket per worker would balance accepts better, but lets any
  process of the same user bind the port beside us and take a share of the connections, and
  drops the connections queued on a dead worker's socket.) See docs/design.md;
- loads the TLS files once, to refuse bad ones before forking (each worker loads them again
  into its own context);
- empties the per-run metrics directory ``<data_dir>/run/metrics`` (vault/metrics.py).

Then it starts worker 1 alone, which runs start-up recovery (as a single daemon does), and the
others once it listens; it reports ready (``--ready-fd``) when all of them listen. A worker that
dies unexpectedly is started again after a backoff that doubles from 1 s to 30 s while workers
keep dying young, and resets once one has lived ``STABLE_SECONDS``; a restarted worker does not
recover (the others' uploads in flight are no leftovers). SIGTERM or SIGINT: every worker gets
SIGTERM and drains like a single daemon (no new connections, in-flight requests finish within
``shutdown_timeout``), the parent waits for all of them and exits 0; a worker still running
``KILL_GRACE`` seconds after that is killed. A worker polls its parent and stops the same way
when the parent is gone.

The parent never has threads, an event loop, the index or a key when it forks: it only waits
(``select`` on the workers' ready pipes and a signal wake-up pipe) and reaps.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from vault import metrics
from vault.config import Config, ConfigError
from vault.services.context import lock_data_dir

log = logging.getLogger("vault")

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
STABLE_SECONDS = 60.0  # a worker that lived this long was no crash loop: the backoff resets
KILL_GRACE = 10.0
PARENT_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class WorkerRole:
    """What one process of the daemon is. A single-process daemon is ``SINGLE``."""

    number: int  # 1..N; 0: the single-process daemon
    lock: bool  # take the data directory lock (False: the parent holds it)
    recover: bool  # run start-up recovery
    parent: int | None = None  # the parent's pid, watched: gone means stop


SINGLE = WorkerRole(number=0, lock=True, recover=True)

# In the worker: run the daemon on the inherited socket; returns the process's exit status.
WorkerMain = Callable[[WorkerRole, socket.socket, Callable[[], None]], int]


def worker_count(configured: int) -> int:
    return configured if configured > 0 else (os.cpu_count() or 1)


def listening_socket(listen: str) -> socket.socket:
    """The daemon's socket, bound and listening (``ConfigError`` naming the address if not)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise ConfigError(f"cannot listen on {listen}: {reason}") from None
    sock.setblocking(False)
    return sock


@dataclass
class _Worker:
    number: int
    pid: int
    ready_fd: int | None  # read end of its ready pipe, until it reported or closed
    started: float
    ready: bool = False


class _Signals:
    """SIGTERM/SIGINT/SIGCHLD as bytes on a pipe the parent selects on."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.stop = False
        signal.set_wakeup_fd(self.write_fd)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up byte is written

    def _stop(self, *_: object) -> None:
        self.stop = True

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass

    def reset_in_child(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # Ctrl-C in a terminal reaches every process of the group: the parent turns it into one
        # orderly SIGTERM per worker.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self.read_fd)
        os.close(self.write_fd)


class Prefork:
    def __init__(self, config: Config, count: int, work: WorkerMain, *, shutdown_timeout: float,
                 on_ready: Callable[[], None] | None, preflight: Callable[[], None] | None = None) -> None:
        self.config = config
        self.preflight = preflight
        self.count = count
        self.work = work
        self.shutdown_timeout = shutdown_timeout
        self.on_ready = on_ready
        self.metrics_dir = config.run_dir / "metrics"
        self.workers: dict[int, _Worker] = {}  # by pid
        self.backoff = BACKOFF_START
        self.pending: dict[int, float] = {}  # worker number -> when to start it again
        self.sock: socket.socket | None = None
        self.signals: _Signals | None = None
        self.lock_fd: int | None = None

    # the parent --------------------------------------------------------------------------------
    def run(self) -> int:
        self.lock_fd = lock_data_dir(self.config)  # IndexUnavailable: a daemon serves it already
        try:
            if self.preflight is not None:
                self.preflight()  # bad TLS files are refused before any worker starts
            self.sock = listening_socket(self.config.listen)
            metrics.prepare_worker_files(self.metrics_dir)
            self.signals = _Signals()
            return self._supervise()
        finally:
            if self.sock is not None:
                self.sock.close()
            if not self.workers:
                metrics.prepare_worker_files(self.metrics_dir)  # nothing of this run is left to scrape
            os.close(self.lock_fd)

    def _supervise(self) -> int:
        assert self.signals is not None
        first = self._start(1, recover=True)
        while not first.ready:
            self._wait(None)
            if self.signals.stop:
                return self._shut_down()
            if first.pid not in self.workers:  # it failed before it listened (it said why)
                return self._exit_status
        for number in range(2, self.count + 1):
            self._start(number, recover=False)
        while not self.signals.stop:
            if not self.announced:
                if len(self.workers) + len(self.pending) < self.count:
                    # A worker failed before it listened, at start: refuse to start, as a single
                    # daemon would, rather than serve with fewer workers than configured.
                    code = self._exit_status
                    self._shut_down()
                    return code
                if len(self.workers) == self.count and all(w.ready for w in self.workers.values()):
                    self.announced = True
                    log.info("%d workers listening on %s", self.count, self.config.listen)
                    if self.on_ready is not None:
                        self.on_ready()
            due = min(self.pending.values(), default=None)
            self._wait(None if due is None else max(0.0, due - time.monotonic()))
            for number, when in list(self.pending.items()):
                if when <= time.monotonic() and not self.signals.stop:
                    del self.pending[number]
                    self._start(number, recover=False)
        return self._shut_down()

    _exit_status = 1
    announced = False

    def _start(self, number: int, *, recover: bool) -> _Worker:
        assert self.sock is not None and self.signals is not None
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(read_fd)
                self.signals.reset_in_child()
                for other in self.workers.values():
                    if other.ready_fd is not None:
                        os.close(other.ready_fd)
                metrics.use_worker_files(self.metrics_dir)
                role = WorkerRole(number=number, lock=False, recover=recover, parent=parent)

                def ready() -> None:
                    try:
                        os.write(write_fd, b"ready\n")
                        os.close(write_fd)
                    except OSError:
                        pass

                code = self.work(role, self.sock, ready)
            except BaseException:  # a worker never returns into the parent's code
                log.exception("worker %d failed", number)
            finally:
                logging.shutdown()
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os._exit(code)
        os.close(write_fd)
        worker = _Worker(number, pid, read_fd, time.monotonic())
        self.workers[pid] = worker
        log.debug("worker %d started (pid %d)", number, pid)
        return worker

    def _wait(self, timeout: float | None) -> None:
        """Wait for a signal, a worker's readiness or the timeout; then reap and read."""
        assert self.signals is not None
        fds = [self.signals.read_fd] + [w.ready_fd for w in self.workers.values() if w.ready_fd is not None]
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            readable = []
        if self.signals.read_fd in readable:
            self.signals.drain()
        for worker in list(self.workers.values()):
            if worker.ready_fd is not None and worker.ready_fd in readable:
                data = b""
                try:
                    data = os.read(worker.ready_fd, 64)
                except OSError:
                    pass
                if data.startswith(b"ready"):
                    worker.ready = True
                os.close(worker.ready_fd)
                worker.ready_fd = None
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
            metrics.forget_worker(self.metrics_dir, pid)
            code = os.waitstatus_to_exitcode(status)
            self._exit_status = code if code > 0 else 1
            if self.signals is not None and self.signals.stop:
                continue
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            if not worker.ready and not self.announced:
                log.debug("worker %d %s before it listened", worker.number, how)  # it said why
                continue
            lived = time.monotonic() - worker.started
            if lived >= STABLE_SECONDS:
                self.backoff = BACKOFF_START
            log.error("worker %d (pid %d) %s; starting it again in %.0f s", worker.number, pid, how, self.backoff)
            self.pending[worker.number] = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def _shut_down(self) -> int:
        """SIGTERM to every worker, wait for them (killing any that overstays), exit 0."""
        assert self.signals is not None
        self.signals.stop = True
        self.pending.clear()
        log.info("shutting down %d worker(s)", len(self.workers))
        for pid in list(self.workers):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + KILL_GRACE
        while self.workers:
            left = deadline - time.monotonic()
            if left <= 0:
                for pid, worker in list(self.workers.items()):
                    log.error("worker %d did not stop in time; killing it", worker.number)
                    _signal(pid, signal.SIGKILL)
                deadline = time.monotonic() + KILL_GRACE
                left = KILL_GRACE
            self._wait(min(left, 1.0))
        log.info("stopped")
        return 0


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def serve_workers(config: Config, count: int, work: WorkerMain, *, shutdown_timeout: float = 30.0,
                  on_ready: Callable[[], None] | None = None, preflight: Callable[[], None] | None = None) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT (see the module docstring); the exit status.
    ``preflight``: checks that can fail cheaply (the TLS files), run once before any fork."""
    return Prefork(config, count, work, shutdown_timeout=shutdown_timeout, on_ready=on_ready,
                   preflight=preflight).run()


def parent_gone(parent: int | None) -> bool:
    """In a worker: has the parent that forked it ended? (Its children are re-parented.)"""
    return parent is not None and os.getppid() != parent
