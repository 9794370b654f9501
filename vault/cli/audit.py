"""``imagevault audit verify|head``: the hash-chained trail, checked without the key provider.

These commands open only the audit trail's own LMDB environment, so an auditor can verify the
chain while the KMS or the blob store is down. A broken chain exits 1.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from vault.audit.chain import GLOBAL_SCOPE, AuditAction, AuditEvent
from vault.audit.hooks import actor_of
from vault.audit.store import AuditLog
from vault.cli.common import COMMAND_LINE, progress_bar, require_initialised, say
from vault.config import Config
from vault.services.context import utc_now


def _open_trail(config: Config) -> AuditLog:
    require_initialised(config)
    return AuditLog(config.audit_dir, utc_now, map_size=config.lmdb_map_size)


def cmd_audit_head(config: Config, args: argparse.Namespace) -> int:
    audit = _open_trail(config)
    try:
        seq, head = audit.head()
    finally:
        audit.close()
    print(json.dumps({"seq": seq, "head": head.hex()}))
    return 0


def cmd_audit_verify(config: Config, args: argparse.Namespace) -> int:
    audit = _open_trail(config)
    try:
        with progress_bar("audit verify", unit="entry") as update:
            result = audit.verify(progress=update)
        outcome = "ok" if result.ok else "chain_broken"
        details = {"entries": result.entries, "bad_seq": result.bad_seq}
        audit.append_sync(AuditEvent(
            AuditAction.AUDIT_VERIFY.value, actor_of(COMMAND_LINE), GLOBAL_SCOPE, (), outcome, details,
        ))
    finally:
        audit.close()
    print(json.dumps(result.to_json()))
    if not result.ok:
        say(f"imagevault: audit chain broken at entry {result.bad_seq}: {result.reason}")
        return 1
    say(f"audit chain intact: {result.entries} entries, head {result.head}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser("audit", help="the hash-chained audit trail").add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("verify", parents=[common], help="check every entry's hash and link; exit 1 at the first bad one")
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser("head", parents=[common], help="print the chain's head (seq and hash) to keep as an external witness")
    p.set_defaults(func=cmd_audit_head)
