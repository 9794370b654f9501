"""``imagevault index upgrade|copy``: the index engine's schema and moving between engines.

``upgrade`` applies the PostgreSQL index's pending schema migrations (an LMDB index upgrades
itself when it is opened). ``copy --to lmdb|postgres`` copies the index and the audit trail to the
other engine, verifies the copy and switches the data directory to it
(``vault.services.indexcopy``); it needs ``--yes`` or a typed confirmation, and refuses while a
daemon serves the data directory. The PostgreSQL DSN comes from the environment
(``IMAGEVAULT_POSTGRES_DSN`` or ``IMAGEVAULT_POSTGRES_DSN_FILE``), never from the command line.
"""

from __future__ import annotations

import argparse
from typing import Any

from vault.cli.common import (
    add_json_option,
    confirm,
    emit,
    progress_bar,
    require_initialised,
)
from vault.config import Config, ConfigError


def cmd_upgrade(config: Config, args: argparse.Namespace) -> int:
    if config.index_engine != "postgres":
        emit(args, {"index_engine": config.index_engine, "upgraded": False},
             f"index: {config.index_engine} needs no upgrade step (it upgrades itself when opened)")
        return 0
    from vault.index import postgres

    if not config.postgres_dsn:
        raise ConfigError("index_engine = postgres needs IMAGEVAULT_POSTGRES_DSN (or IMAGEVAULT_POSTGRES_DSN_FILE)")
    before, after = postgres.migrate(config.postgres_dsn, timeout=config.postgres_connect_timeout)
    emit(args, {"index_engine": "postgres", "from_version": before, "to_version": after, "upgraded": after != before},
         f"index schema: version {before} -> {after}" if after != before else f"index schema: version {after}, up to date")
    return 0


def cmd_copy(config: Config, args: argparse.Namespace) -> int:
    from vault.services.indexcopy import copy_index

    require_initialised(config)
    confirm(args.yes, "copy", f"index copy to {args.to}")
    with progress_bar(f"copy to {args.to}", unit="key") as update:
        report = copy_index(config, args.to, progress=update)
    lines = [(f"index copied from {report.source} to {report.target} and verified: {report.keys} key(s), "
              f"audit chain of {report.audit_entries} entries verifies; the data directory now uses "
              f"index_engine = {report.target} (set IMAGEVAULT_INDEX_ENGINE={report.target})")]
    lines += [f"  kept the previous {path}" for path in report.kept]
    emit(args, report.to_json(), lines)
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    index = sub.add_parser("index", help="the index engine: schema upgrade, copy between engines")
    commands = index.add_subparsers(dest="index_command", required=True)
    p = commands.add_parser("upgrade", parents=[common], help="apply the PostgreSQL index's pending schema migrations")
    add_json_option(p)
    p.set_defaults(func=cmd_upgrade)
    p = commands.add_parser("copy", parents=[common],
                            help="copy the index and audit trail to the other engine, verify, switch the data directory")
    p.add_argument("--to", required=True, choices=("lmdb", "postgres"), help="the engine to copy to")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_json_option(p)
    p.set_defaults(func=cmd_copy)
