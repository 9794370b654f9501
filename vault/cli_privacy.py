"""``imagevault retention sweep [--dry-run]`` and ``imagevault audit verify``.

Kept apart from ``vault/cli.py`` (which registers them with one call) so that the privacy
commands and the core commands can change independently. Results go to stdout as JSON,
progress bars and messages to stderr; a broken audit chain exits 1.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any

from vault.config import Config


def cmd_retention_sweep(config: Config, args: argparse.Namespace) -> int:
    from vault.cli import _cli_operator, _progress, _run_with_vault, _say

    async def work(vault: Any) -> Any:
        bar, update = _progress("retention sweep" + (" (dry run)" if args.dry_run else ""), unit="record")
        try:
            return await vault.sweep_retention(_cli_operator(), dry_run=args.dry_run, progress=update)
        finally:
            bar.close()

    report = _run_with_vault(config, work)
    verb = "would shred" if args.dry_run else "shredded"
    _say(f"{report.due} due, {verb} {report.due - report.held if args.dry_run else report.shredded}, {report.held} on legal hold")
    print(json.dumps(report.to_json()))
    return 0


def cmd_audit_head(config: Config, args: argparse.Namespace) -> int:
    from vault.audit.store import AuditLog
    from vault.cli import _require_initialised

    _require_initialised(config)
    audit = AuditLog(config.audit_dir, lambda: datetime.now(timezone.utc), map_size=config.lmdb_map_size)
    try:
        seq, head = audit.head()
    finally:
        audit.close()
    print(json.dumps({"seq": seq, "head": head.hex()}))
    return 0


def cmd_audit_verify(config: Config, args: argparse.Namespace) -> int:
    from vault.audit.chain import GLOBAL_SCOPE, AuditAction, AuditEvent
    from vault.audit.hooks import cli_actor
    from vault.audit.store import AuditLog
    from vault.cli import _progress, _require_initialised, _say

    _require_initialised(config)
    audit = AuditLog(config.audit_dir, lambda: datetime.now(timezone.utc), map_size=config.lmdb_map_size)
    try:
        bar, update = _progress("audit verify", unit="entry")
        try:
            result = audit.verify(progress=update)
        finally:
            bar.close()
        outcome = "ok" if result.ok else "chain_broken"
        details = {"entries": result.entries, "bad_seq": result.bad_seq}
        audit.append_sync(AuditEvent(AuditAction.AUDIT_VERIFY.value, cli_actor(), GLOBAL_SCOPE, (), outcome, details))
    finally:
        audit.close()
    print(json.dumps(result.to_json()))
    if not result.ok:
        _say(f"imagevault: audit chain broken at entry {result.bad_seq}: {result.reason}")
        return 1
    _say(f"audit chain intact: {result.entries} entries, head {result.head}")
    return 0


def add_privacy_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    retention = sub.add_parser("retention", help="retention expiry").add_subparsers(dest="retention_command", required=True)
    p = retention.add_parser("sweep", parents=[common], help="shred every record whose retention has ended (not held)")
    p.add_argument("--dry-run", action="store_true", help="count what is due and held; shred nothing")
    p.set_defaults(func=cmd_retention_sweep)

    audit = sub.add_parser("audit", help="the hash-chained audit trail").add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("verify", parents=[common], help="check every entry's hash and link; exit 1 at the first bad one")
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser("head", parents=[common], help="print the chain's head (seq and hash) to keep as an external witness")
    p.set_defaults(func=cmd_audit_head)


__all__ = ["add_privacy_commands"]
