"""Background jobs that run once: one leader per job, elected with a file lock per host, or
with the index engine's locks across hosts.

With ``imagevault serve --workers N`` every worker runs the same background jobs; those that
must run once per data directory (the retention sweep, the shred epoch, the purges, the audit
witness, resuming an interrupted rewrap) first take an exclusive, non-blocking ``flock`` on
``<data_dir>/run/jobs/<job>.lock``. The process that gets it leads that job and keeps the lock
until it stops or dies; the others try again every ``RETRY_SECONDS``. The kernel releases the
locks of a process however it ends (SIGKILL included), so a dead leader's job moves to another
worker at that worker's next try, without a lease timeout to tune and without any write to the
index: it works the same whatever the index engine.

An index that several hosts share (PostgreSQL) provides its own ``JobLocks``
(``IndexEngine.job_locks``: advisory locks held by a session of their own): then those elect
each job across every daemon and every worker of the cluster instead of the file locks, and a
job moves to another node when its leader's session ends (the process died, its host vanished
and the server's keepalives noticed, or the database restarted). A leader re-checks its lock
before every round, so after a lost session it stops until it wins the lock again.

A single-process daemon takes every lock at once (nothing else holds them), so its jobs run as
they always did. CLI commands run no background jobs and take none of these locks.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from pathlib import Path

from vault.index.engine import JobLocks

log = logging.getLogger(__name__)

# How often a worker that does not lead a job tries to take it over.
RETRY_SECONDS = 5.0
_JOB_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


class JobLeases:
    """The job locks this process holds (``try_lead``), released by ``release_all`` or exit."""

    def __init__(self, directory: Path, cluster: JobLocks | None = None) -> None:
        self._directory = directory
        self._cluster = cluster
        self._cluster_held: set[str] = set()
        self._held: dict[str, int] = {}
        self._followed: set[str] = set()  # jobs another process led when this one last tried

    @property
    def leading(self) -> frozenset[str]:
        return frozenset(self._held) | frozenset(self._cluster_held)

    @property
    def across_hosts(self) -> bool:
        return self._cluster is not None

    def try_lead(self, job: str) -> bool:
        """True if this process leads ``job``: it held the lock already, or took it now. With
        cluster locks this asks the database (call it off the event loop)."""
        if not _JOB_NAME.fullmatch(job):
            raise ValueError("a job name is lower-case letters, digits and dashes")
        if self._cluster is not None:
            return self._try_cluster(job)
        if job in self._held:
            return True
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._directory / f"{job}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._followed.add(job)
            return False
        self._held[job] = fd
        if job in self._followed:  # a take-over is news; a start, where every job is free, is not
            log.info("this process took over the %s job (pid %d)", job, os.getpid())
        else:
            log.debug("this process runs the %s job (pid %d)", job, os.getpid())
        return True

    def _try_cluster(self, job: str) -> bool:
        assert self._cluster is not None
        if self._cluster.try_lock(job):
            if job not in self._cluster_held:
                self._cluster_held.add(job)
                if job in self._followed:
                    log.info("this node took over the %s job (pid %d)", job, os.getpid())
                else:
                    log.debug("this node runs the %s job (pid %d)", job, os.getpid())
            return True
        if job in self._cluster_held:
            log.warning("this node lost the lock of the %s job", job)
        self._cluster_held.discard(job)
        self._followed.add(job)
        return False

    def release_all(self) -> None:
        if self._cluster is not None:
            self._cluster.release_all()
            self._cluster_held.clear()
        for fd in self._held.values():
            os.close(fd)  # closing the only descriptor of the lock's open file releases it
        self._held.clear()
