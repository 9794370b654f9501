"""Durable file writes: the one place that knows how to make a rename survive a crash; and the
modes of private files and directories.

A file replaced with ``write_atomic`` is seen by a reader, and after a crash, as either the old
or the new content, never a mixture: temp file in the same directory (mode 0600) → write →
fsync → rename over the target → fsync the directory, because the rename itself lives in the
directory and is lost with it otherwise.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

# Everything under the data directory is the daemon's alone. A mode given to mkdir/open is only
# ever narrowed by the umask, so these hold whatever the umask; a default mode (0777/0666) would
# not (blobs/ came out 0755 and quarantined blobs 0644 under the usual umask 022).
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def fsync_dir(path: Path) -> None:
    """Make the entries of ``path`` (created, renamed or removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, atomically and durably (see the module docstring)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def make_private_dir(path: Path) -> None:
    """Create ``path`` mode 0700, and any missing parent too (``Path.mkdir(parents=True)``
    would give the parents the default mode)."""
    if path.is_dir():
        return
    make_private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, PRIVATE_DIR)


def open_private(path: Path) -> int:
    """A new file, mode 0600, for writing (``FileExistsError`` if it exists)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)


def tighten_modes(root: Path, *, depth: int, files: bool) -> int:
    """Take group and other access away from ``root`` and the directories ``depth`` levels
    below it (and from the files there, with ``files``). Returns how many paths changed;
    a missing ``root`` changes nothing. Symbolic links are left alone."""
    changed = 0
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        return 0
    if stat.S_ISDIR(info.st_mode):
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(root, stat.S_IMODE(info.st_mode) & PRIVATE_DIR)
            changed += 1
        if depth > 0:
            with os.scandir(root) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        changed += tighten_modes(Path(entry.path), depth=depth - 1, files=files)
                    elif files and entry.is_file(follow_symlinks=False):
                        mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                        if mode & 0o077:
                            os.chmod(entry.path, mode & PRIVATE_FILE)
                            changed += 1
    return changed
