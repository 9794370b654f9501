"""``imagevault retention sweep [--dry-run] [--yes]``: shred what has expired, now.

Shredding cannot be undone, so like ``gc`` the sweep first counts what is due and asks (``--yes``
skips the question; without a terminal and without ``--yes`` nothing is shredded).
"""

from __future__ import annotations

import argparse
from typing import Any

from vault.cli.common import COMMAND_LINE, add_json_option, confirm, emit, progress_bar, run_with_vault, say
from vault.config import Config


def cmd_retention_sweep(config: Config, args: argparse.Namespace) -> int:
    async def sweep(vault: Any, dry_run: bool) -> Any:
        with progress_bar("retention sweep" + (" (counting)" if dry_run else ""), unit="record") as update:
            return await vault.sweep_retention(COMMAND_LINE, dry_run=dry_run, progress=update)

    async def work(vault: Any) -> Any:
        if args.yes and not args.dry_run:
            return await sweep(vault, False)
        plan = await sweep(vault, True)
        if args.dry_run or plan.due - plan.held <= 0:
            return plan
        say(f"retention sweep: {plan.due - plan.held} record(s) past their retention will be shredded for good "
            f"(images, renditions and personal fields unrecoverable); {plan.held} on legal hold kept")
        confirm(args.yes, "shred", "retention sweep")
        return await sweep(vault, False)

    report = run_with_vault(config, work)
    dry = args.dry_run
    verb = "would shred" if dry else "shredded"
    emit(args, report.to_json(), f"retention sweep{' (dry run)' if dry else ''}: {report.due} due, {verb} "
                                 f"{report.due - report.held if dry else report.shredded}, {report.held} on legal hold"
                                 + (f", {report.tampered} failing their integrity check (kept)" if report.tampered else ""))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    retention = sub.add_parser("retention", help="retention expiry").add_subparsers(dest="retention_command", required=True)
    p = retention.add_parser("sweep", parents=[common],
                             help="shred every record whose retention has ended (not held): counts first, then asks")
    p.add_argument("--dry-run", action="store_true", help="count what is due and held; shred nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_json_option(p)
    p.set_defaults(func=cmd_retention_sweep)
