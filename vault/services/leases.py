"""Background jobs that run once per host: one leader per job, elected with a file lock.

With ``imagevault serve --workers N`` every worker runs the same background jobs; those that
must run once per data directory (the retention sweep, the shred epoch, the purges, the audit
witness, resuming an interrupted rewrap) first take an exclusive, non-blocking ``flock`` on
``<data_dir>/run/jobs/<job>.lock``. The process that gets it leads that job and keeps the lock
until it stops or dies; the others try again every ``RETRY_SECONDS``. The kernel releases the
locks of a process however it ends (SIGKILL included), so a dead leader's job moves to another
worker at that worker's next try, without a lease timeout to tune and without any write to the
index: it works the same whatever the index engine.

A single-process daemon takes every lock at once (nothing else holds them), so its jobs run as
they always did. CLI commands run no background jobs and take none of these locks.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

# How often a worker that does not lead a job tries to take it over.
RETRY_SECONDS = 5.0
_JOB_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


class JobLeases:
    """The job locks this process holds (``try_lead``), released by ``release_all`` or exit."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._held: dict[str, int] = {}
        self._followed: set[str] = set()  # jobs another process led when this one last tried

    @property
    def leading(self) -> frozenset[str]:
        return frozenset(self._held)

    def try_lead(self, job: str) -> bool:
        """True if this process leads ``job``: it held the lock already, or took it now."""
        if job in self._held:
            return True
        if not _JOB_NAME.fullmatch(job):
            raise ValueError("a job name is lower-case letters, digits and dashes")
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

    def release_all(self) -> None:
        for fd in self._held.values():
            os.close(fd)  # closing the only descriptor of the lock's open file releases it
        self._held.clear()
