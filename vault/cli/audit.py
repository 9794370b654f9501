"""``imagevault audit verify|head|list|export|verify-export``: the hash-chained trail, without
the key provider.

These commands open only the audit trail's own LMDB environment, so the chain can be verified
and read while the KMS or the blob store is down (the data directory's identity is still checked:
it needs neither). A broken chain exits 1. ``list`` prints entries, one line each (as JSON
lines with ``--json``), every scope (the command line acts as the admin), with the same
filters as ``GET /v1/audit``; like the HTTP listing it is itself audited. ``export`` streams the
whole chain from a sequence number on, as JSON lines carrying the hashed bytes
(``vault.audit.export``), optionally following new entries, for a SIEM; it is audited before
its first line, so the export's own entry is in the stream. ``verify-export`` checks such a file
without a data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import threading
from typing import Any

from vault.audit.chain import GLOBAL_SCOPE, HASH_LEN, AuditAction, AuditEvent, MalformedEntry
from vault.audit.export import ExportCheck, export_line
from vault.audit.hooks import actor_of
from vault.audit.query import parse_audit_filter
from vault.audit.store import MAX_PAGE, AuditLog
from vault import datadir
from vault.cli.common import COMMAND_LINE, CliError, add_json_option, emit, progress_bar, require_initialised, say
from vault.config import Config
from vault.errors import ImageVaultError
from vault.services.context import utc_now


def _open_trail(config: Config) -> AuditLog:
    require_initialised(config)
    datadir.check(config)
    from vault import components

    return components.open_audit(config, utc_now)


def cmd_audit_head(config: Config, args: argparse.Namespace) -> int:
    audit = _open_trail(config)
    try:
        seq, head = audit.head()
    finally:
        audit.close()
    emit(args, {"seq": seq, "head": head.hex()}, f"audit head: entry {seq}, hash {head.hex()}")
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
    if not result.ok:
        emit(args, result.to_json(), f"audit chain BROKEN at entry {result.bad_seq}: {result.reason} "
                                     f"({result.entries} entries before it intact)")
        say(f"imagevault: audit chain broken at entry {result.bad_seq}: {result.reason}")
        return 1
    emit(args, result.to_json(), f"audit chain intact: {result.entries} entries, head {result.head}")
    return 0


def cmd_audit_list(config: Config, args: argparse.Namespace) -> int:
    try:
        wanted = parse_audit_filter(args.record_id, args.actor, args.since, args.until)
    except ImageVaultError as exc:
        raise CliError(f"--{exc.field.replace('_', '-')}: {exc.message}") from None  # type: ignore[attr-defined]
    if args.tenant is not None:
        wanted = dataclasses.replace(wanted, scopes=frozenset({args.tenant}))
    if args.after < 0 or (args.limit is not None and args.limit < 1):
        raise CliError("--after must be 0 or more and --limit 1 or more")
    audit = _open_trail(config)
    shown = 0
    try:
        if wanted.record_id is not None and not audit.record_index_complete():
            asyncio.run(audit.index_records())
        after: int | None = args.after
        while after is not None and (args.limit is None or shown < args.limit):
            page = audit.page(after, MAX_PAGE if args.limit is None else min(MAX_PAGE, args.limit - shown), wanted)
            for entry in page.entries:
                print(json.dumps(entry.to_json(), separators=(",", ":")) if getattr(args, "json", False)
                      else _entry_line(entry.to_json()))
            shown += len(page.entries)
            after = page.next_after
        details = {"entries": shown, "filters": sorted(k for k in ("record_id", "actor", "since", "until", "tenant")
                                                         if getattr(args, k) is not None)}
        audit.append_sync(AuditEvent(
            AuditAction.AUDIT_READ.value, actor_of(COMMAND_LINE), GLOBAL_SCOPE, (wanted.record_id,) if wanted.record_id else (), "ok", details,
        ))
    finally:
        audit.close()
    return 0


def _entry_line(entry: dict[str, Any]) -> str:
    actor = entry["actor"]
    who = actor["name"] + (f" for {actor['on_behalf_of']}" if actor.get("on_behalf_of") else "")
    records = ",".join(entry["record_ids"])
    details = " ".join(f"{k}={v}" for k, v in sorted(entry["details"].items()))
    return "  ".join(part for part in (
        f"{entry['seq']:>8}", entry["time"], f"{entry['tenant']:12}", f"{who:20}", f"{entry['action']:18}",
        f"{entry['outcome']:12}", records, details) if part)


EXPORT_BATCH = 1000


def cmd_audit_export(config: Config, args: argparse.Namespace) -> int:
    if args.after < 0 or args.interval <= 0:
        raise CliError("--after must be 0 or more and --interval positive")
    audit = _open_trail(config)
    exported = 0
    after = args.after
    # While following, Ctrl-C and SIGTERM only ask the loop to stop, between batches or during
    # the wait: an exception raised wherever the signal lands (inside a read of the trail, or
    # its close) could leave the store half shut and the command hung.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)} if args.follow else {}
    try:
        # Audited first: the trail says an export began even if it is never stopped cleanly,
        # and the stream carries its own entry.
        audit.append_sync(AuditEvent(
            AuditAction.AUDIT_READ.value, actor_of(COMMAND_LINE), GLOBAL_SCOPE, (), "ok",
            {"export": True, "after": args.after, "follow": bool(args.follow)},
        ))
        while not stop.is_set():
            batch = audit.stored_after(after, EXPORT_BATCH)
            for seq, stored in batch:
                try:
                    line = export_line(stored)
                except MalformedEntry as exc:
                    raise CliError(f"audit export stopped at entry {seq}: {exc}; run 'imagevault audit verify'") from None
                sys.stdout.write(line + "\n")
                after = seq
                exported += 1
            sys.stdout.flush()
            if len(batch) == EXPORT_BATCH:
                continue
            if not args.follow:
                break
            stop.wait(args.interval)
    except KeyboardInterrupt:
        pass  # Ctrl-C of a one-off export: what was written is complete lines
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining
        # about stdout at exit.
        sys.stdout = open("/dev/null", "w")  # noqa: SIM115
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        audit.close()
    say(f"audit export: {exported} entries, through seq {after}")
    return 0


def cmd_audit_verify_export(config: Config, args: argparse.Namespace) -> int:
    prev = None
    if args.prev_hash is not None:
        try:
            prev = bytes.fromhex(args.prev_hash)
        except ValueError:
            prev = b""
        if len(prev) != HASH_LEN:
            raise CliError("--prev-hash must be 64 hex digits (the hash of the entry before the first line)")
    check = ExportCheck(prev)
    try:
        handle = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        for text in handle:
            if not check.feed(text):
                break
    except UnicodeDecodeError:
        raise CliError(f"{args.file} is not UTF-8 text") from None
    finally:
        if handle is not sys.stdin:
            handle.close()
    report = check.report()
    verdict = (f"intact: {report.entries} entries, seq {report.first_seq} to {report.last_seq}" if report.ok
               else f"broken at line {report.bad_line}: {report.reason}")
    emit(args, report.to_json(), f"export {verdict}")
    if not report.ok:
        say(f"imagevault: export broken at line {report.bad_line}: {report.reason}")
        return 1
    say(f"export intact: {report.entries} entries, seq {report.first_seq} to {report.last_seq}, head {report.head}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser("audit", help="the hash-chained audit trail").add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("verify", parents=[common], help="check every entry's hash and link; exit 1 at the first bad one")
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser("head", parents=[common], help="print the chain's head (seq and hash) to keep as an external witness")
    p.set_defaults(func=cmd_audit_head)
    p = audit.add_parser("list", parents=[common], help="print entries (every tenant), optionally filtered; --json: JSON lines")
    p.add_argument("--after", type=int, default=0, help="only entries with a larger sequence number")
    p.add_argument("--limit", type=int, default=None, help="at most this many entries (default: all)")
    p.add_argument("--record-id", default=None, help="only entries naming this record")
    p.add_argument("--actor", default=None, help="only entries of this actor (token name, cli, retention-sweeper ...)")
    p.add_argument("--since", default=None, help="only entries at or after this RFC 3339 time")
    p.add_argument("--until", default=None, help="only entries before this RFC 3339 time")
    p.add_argument("--tenant", default=None, help="only entries in this tenant's scope ('-': the global ones)")
    p.set_defaults(func=cmd_audit_list)
    p = audit.add_parser("export", parents=[common],
                         help="stream the chain as JSON lines with each entry's hashed bytes (for a SIEM)")
    p.add_argument("--after", type=int, default=0, help="only entries with a larger sequence number")
    p.add_argument("--follow", action="store_true", help="keep running and print new entries as they are appended")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --follow (default 1)")
    p.set_defaults(func=cmd_audit_export)
    p = audit.add_parser("verify-export", parents=[common],
                         help="check an exported file's hashes and links (no data directory needed)")
    p.add_argument("file", help="the export (JSON lines); '-' for standard input")
    p.add_argument("--prev-hash", default=None,
                   help="hash of the entry before the file's first line (from the previous export)")
    p.set_defaults(func=cmd_audit_verify_export)
    for parser in audit.choices.values():
        add_json_option(parser)  # export writes JSON lines either way: it is a machine format
