"""``imagevault retention sweep [--dry-run]``: shred what has expired, now."""

from __future__ import annotations

import argparse
from typing import Any

from vault.cli.common import COMMAND_LINE, add_json_option, emit, progress_bar, run_with_vault
from vault.config import Config


def cmd_retention_sweep(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        with progress_bar("retention sweep" + (" (dry run)" if args.dry_run else ""), unit="record") as update:
            return await vault.sweep_retention(COMMAND_LINE, dry_run=args.dry_run, progress=update)

    report = run_with_vault(config, work)
    verb = "would shred" if args.dry_run else "shredded"
    emit(args, report.to_json(), f"retention sweep{' (dry run)' if args.dry_run else ''}: {report.due} due, {verb} "
                                 f"{report.due - report.held if args.dry_run else report.shredded}, {report.held} on legal hold"
                                 + (f", {report.tampered} failing their integrity check (kept)" if report.tampered else ""))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    retention = sub.add_parser("retention", help="retention expiry").add_subparsers(dest="retention_command", required=True)
    p = retention.add_parser("sweep", parents=[common], help="shred every record whose retention has ended (not held)")
    p.add_argument("--dry-run", action="store_true", help="count what is due and held; shred nothing")
    add_json_option(p)
    p.set_defaults(func=cmd_retention_sweep)
