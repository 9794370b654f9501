"""What every command shares: one-line errors and their exit statuses, confirmation of
destructive steps, human or JSON output, progress bars, the admin principal, and opening the
service for the length of one command.

Results go to stdout: for people by default, as JSON with ``--json`` (one document, or JSON
lines for listings); messages, warnings and progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vault import datadir
from vault.auth import ADMIN_TENANT, Principal, Role
from vault.config import Config, ConfigError
from vault.errors import ImageVaultError

T = TypeVar("T")

# Whoever can read the data directory and its key material already holds every key: the
# command line acts as the admin role (no tenant, every tenant), and the audit trail names it "cli".
COMMAND_LINE = Principal(ADMIN_TENANT, Role.ADMIN, "cli")
# sysexits.h: a configuration or start-up failure (service managers do not restart on it).
EX_CONFIG = 78


class CliError(Exception):
    """A failure reported as one line on stderr with exit status ``exit_status``."""

    exit_status = 1


class StartupError(CliError):
    """The command could not start: configuration, data directory, key provider, blob store,
    listening socket or TLS files. Exit status 78 (EX_CONFIG)."""

    exit_status = EX_CONFIG


def say(message: str) -> None:
    print(message, file=sys.stderr)


def reported(run: Callable[[], int]) -> int:
    """``run()``'s exit status, its failures reported as one line on stderr: 78 for a
    configuration or start-up failure, a ``CliError``'s own status, 1 for another refusal,
    130 when interrupted. The command line and each ``serve --workers`` worker end this way."""
    try:
        return run()
    except ConfigError as exc:
        say(f"imagevault: {exc}")
        return EX_CONFIG
    except CliError as exc:
        say(f"imagevault: {exc}")
        return exc.exit_status
    except ImageVaultError as exc:
        say(f"imagevault: {exc.message}")
        return 1
    except KeyboardInterrupt:
        say("imagevault: interrupted")
        return 130


def add_json_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: absent here, the value given before the sub-command (or False) stays.
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON (for scripts) instead of text")


def emit(args: argparse.Namespace, document: Any, human: str | list[str]) -> None:
    """The result on stdout: ``document`` as JSON with ``--json``, else ``human`` text."""
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2))
    else:
        print(human if isinstance(human, str) else "\n".join(human))


def initialised(config: Config) -> bool:
    return datadir.identity_path(config).exists() or datadir.has_index(config)


def require_initialised(config: Config) -> None:
    if not initialised(config):
        raise StartupError(f"data directory {config.data_dir} is not initialised; run 'imagevault init' first")


@contextlib.contextmanager
def starting(what: str) -> Iterator[None]:
    """Failures inside the block are start-up failures: one line, exit status 78."""
    try:
        yield
    except (CliError, ConfigError):
        raise
    except ImageVaultError as exc:
        raise StartupError(f"{what}: {exc.message}") from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise StartupError(f"{what}: {exc.strerror or exc.__class__.__name__}{where}") from None


def confirm(yes: bool, word: str, what: str) -> None:
    """Go on with a destructive step after ``--yes`` or the operator typing ``word``; without
    a terminal and without ``--yes``, stop (nothing has changed yet)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"{what}: nothing changed; confirm with --yes (or run it from a terminal)")
    answer = input(f"type '{word}' to continue: ")
    if answer.strip() != word:
        raise CliError("cancelled; nothing changed")


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
    yields the callback that moves it, closes it however the block ends. Log lines written
    meanwhile go through the bar (cleared, printed, redrawn), not into it."""
    bar = tqdm(desc=description, unit=unit, file=sys.stderr, disable=None)

    def update(done: int, total: int | None) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger()]):
            yield update
    finally:
        bar.close()


def run_with_vault(config: Config, work: Callable[[Any], Awaitable[T]]) -> T:
    """Open the service (keys + store + index) for one command, run ``work(vault)``, close it.
    A failure to open is a start-up failure (exit status 78)."""
    from vault.service import Vault

    require_initialised(config)

    async def runner() -> T:
        with starting(f"cannot open data directory {config.data_dir}"):
            vault = await Vault.open(config)
        try:
            return await work(vault)
        finally:
            await vault.close()

    return asyncio.run(runner())
