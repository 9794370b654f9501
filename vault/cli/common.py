"""What every command shares: one-line errors, progress bars, the admin principal, and
opening the service for the length of one command.

Results that scripts consume go to stdout, messages and progress bars to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

from vault.auth import ADMIN_TENANT, Principal, Role
from vault.config import Config

T = TypeVar("T")

# Whoever can read the data directory and its key material already holds every key: the
# command line acts as the admin role (no tenant, every tenant), and the audit trail names it "cli".
COMMAND_LINE = Principal(ADMIN_TENANT, Role.ADMIN, "cli")


class CliError(Exception):
    """A failure reported as one line on stderr with exit status 1."""


def say(message: str) -> None:
    print(message, file=sys.stderr)


def initialised(config: Config) -> bool:
    return (config.index_dir / "data.mdb").exists()


def require_initialised(config: Config) -> None:
    if not initialised(config):
        raise CliError(f"data directory {config.data_dir} is not initialised; run 'imagevault init' first")


def confirm(word: str) -> None:
    """Ask the operator to type ``word`` before a destructive step; refuse without a terminal."""
    if not sys.stdin.isatty():
        raise CliError("this command destroys key material; run it from a terminal or pass --yes")
    answer = input(f"type '{word}' to continue: ")
    if answer.strip() != word:
        raise CliError("cancelled")


def read_passphrase(path: str | None, *, what: str, twice: bool = False) -> str:
    """A passphrase from the first line of ``path``, or typed at the terminal (never argv)."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.readline().rstrip("\r\n")
        except OSError as exc:
            raise CliError(f"cannot read the passphrase file: {exc.strerror}") from None
    if not sys.stdin.isatty():
        raise CliError(f"the {what} passphrase is read from a terminal or --passphrase-file")
    import getpass

    first = getpass.getpass(f"{what} passphrase: ")
    if twice and getpass.getpass(f"{what} passphrase again: ") != first:
        raise CliError("the passphrases differ")
    return first


@contextlib.contextmanager
def progress_bar(description: str, unit: str = "key") -> Iterator[Callable[[int, int | None], None]]:
    """A bar on stderr (hidden when stderr is not a terminal) for the length of the block;
    yields the callback that moves it, closes it however the block ends."""
    bar = tqdm(desc=description, unit=unit, file=sys.stderr, disable=None)

    def update(done: int, total: int | None) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def run_with_vault(config: Config, work: Callable[[Any], Awaitable[T]]) -> T:
    """Open the service (keys + store + index) for one command, run ``work(vault)``, close it."""
    from vault.service import Vault

    require_initialised(config)

    async def runner() -> T:
        vault = await Vault.open(config)
        try:
            return await work(vault)
        finally:
            await vault.close()

    return asyncio.run(runner())
