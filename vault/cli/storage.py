"""``imagevault verify|gc|backup|restore``: the blob store's integrity, garbage and copies.

``gc`` deletes blobs: it first counts what it would delete and needs ``--yes`` or a typed
confirmation before deleting; ``--dry-run`` only counts.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from vault.cli.common import (
    COMMAND_LINE, CliError, add_json_option, confirm, emit, progress_bar, read_passphrase, run_with_vault, say,
)
from vault.config import Config
from vault.errors import InvalidRequest
from vault.services.backups import DEFAULT_KEEP
from vault.values import parse_duration


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        with progress_bar("verify", unit="blob") as update:
            return await vault.verify_blobs(COMMAND_LINE, sample=args.sample, progress=update)

    report = run_with_vault(config, work)
    if report.ok:
        emit(args, report.to_json(), f"verify: {report.checked} blob(s) authenticated, no corruption")
        return 0
    summary = (f"verify: {len(report.corrupt)} corrupt, {len(report.missing)} missing blob(s), "
               f"{len(report.unreadable_keys)} unreadable key(s), {len(report.tampered)} record(s) failing their "
               f"index integrity check among {report.checked} checked")
    lines = [summary]
    for label, ids in (("corrupt", report.corrupt), ("missing", report.missing),
                       ("unreadable key", report.unreadable_keys), ("tampered", report.tampered)):
        lines += [f"  {label:15} {record_id}" for record_id in ids]
    emit(args, report.to_json(), lines)
    return 2


def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        with progress_bar("backup", unit="blob") as update:
            return await vault.backup(COMMAND_LINE, Path(args.dest), keep=args.keep, progress=update)

    report = run_with_vault(config, work)
    emit(args, report.to_json(),
         f"backup snapshot {report.snapshot}: {report.records} records, {report.blobs_copied} blob(s) copied, "
         f"{report.blobs_already_present} already present; {len(report.snapshots_removed)} old snapshot(s) and "
         f"{report.blobs_removed} unreferenced blob(s) removed")
    return 0


def cmd_restore(config: Config, args: argparse.Namespace) -> int:
    from vault.service import Vault

    escrow = passphrase = None
    if args.escrow:
        try:
            escrow = Path(args.escrow).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read the key escrow: {exc.strerror}") from None
        passphrase = read_passphrase(args.passphrase_file, what="escrow")
    with progress_bar("restore", unit="blob") as update:
        report = asyncio.run(Vault.restore(
            COMMAND_LINE, config, Path(args.src), snapshot=args.snapshot, escrow=escrow,
            escrow_passphrase=passphrase, progress=update,
        ))
    emit(args, report.to_json(),
         f"restored {report.records} records and {report.blobs_restored} blob(s) from snapshot {report.snapshot} "
         f"(audit trail from {report.audit_from}, {report.revocations_applied} later token revocation(s) applied); "
         f"{len(report.dropped_unopenable_keys)} record(s) with retired keys dropped, "
         f"{len(report.missing_blobs)} blob(s) missing")
    return 0 if not report.missing_blobs else 2


def cmd_gc(config: Config, args: argparse.Namespace) -> int:
    try:
        min_age = parse_duration(args.min_age, what="--min-age", allow_zero=True)
    except InvalidRequest as exc:
        raise CliError(exc.message) from None
    if min_age is None:
        raise CliError("--min-age must be a duration such as 1h, 30m or 0")

    async def collect(vault: Any, dry_run: bool) -> Any:
        with progress_bar("gc (counting)" if dry_run else "gc", unit="blob") as update:
            return await vault.collect_garbage(COMMAND_LINE, min_age=min_age, progress=update, dry_run=dry_run)

    async def work(vault: Any) -> Any:
        if args.yes and not args.dry_run:
            return await collect(vault, False)
        plan = await collect(vault, True)
        say(f"gc: {plan.scanned} blob(s) scanned; {plan.removed} orphan(s) older than {args.min_age} would be deleted "
            f"for good, {plan.kept_recent} younger one(s) kept")
        if args.dry_run or plan.removed == 0:
            return plan
        confirm(args.yes, "delete", "gc")
        return await collect(vault, False)

    result = run_with_vault(config, work)
    dry = args.dry_run or (not args.yes and result.removed == 0)
    verb = "would be removed" if args.dry_run else "removed"
    emit(args, result.to_json() | ({"dry_run": True} if args.dry_run else {}),
         f"gc{' (dry run)' if args.dry_run else ''}: {result.scanned} blob(s) scanned, {result.removed} orphan(s) "
         f"{verb}, {result.kept_recent} recent orphan(s) kept"
         + ("" if dry else f", {result.temporary} temporary leftover(s) removed"))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("backup", parents=[common],
                       help="online backup: index and audit snapshot + incremental blobs (no key material)")
    p.add_argument("dest")
    p.add_argument("--keep", type=int, default=DEFAULT_KEEP, help=f"snapshots to keep (default {DEFAULT_KEEP})")
    add_json_option(p)
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser("restore", parents=[common], help="restore a backup into an empty data directory")
    p.add_argument("src")
    p.add_argument("--snapshot", help="index snapshot to restore (default: newest)")
    p.add_argument("--escrow", help="the local keyring's key escrow (imagevault keys escrow)")
    p.add_argument("--passphrase-file", help="read the escrow passphrase from this file's first line (default: ask)")
    add_json_option(p)
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser("verify", parents=[common], help="decrypt and authenticate every blob (scrub for bit-rot)")
    p.add_argument("--sample", type=int, default=None, help="check only this many random records")
    add_json_option(p)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("gc", parents=[common],
                       help="delete orphan blobs (no record points at them): counts first, then asks; progress on stderr")
    p.add_argument("--min-age", default="1h",
                   help="keep orphans younger than this (default 1h; 0: none): uploads in flight commit their blob "
                        "before their record")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="count the orphans that would be deleted; delete nothing")
    add_json_option(p)
    p.set_defaults(func=cmd_gc)
