"""``imagevault keys status|rotate|rewrap|retire|epoch|escrow``: the key-encryption key's lifecycle.

``retire`` and ``epoch`` destroy key versions at the KMS for good: both print what they will
destroy and what becomes unreadable, then need ``--yes`` or the operator typing a word at a
terminal; ``retire --dry-run`` prints the plan and changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from vault.cli.common import (
    COMMAND_LINE, CliError, add_json_option, confirm, emit, progress_bar, read_passphrase, run_with_vault, say,
)
from vault.config import Config
from vault.files import write_atomic


def _per_version(counts: dict[int, int]) -> str:
    return ", ".join(f"{n} on v{v}" for v, n in sorted(counts.items())) or "none"


def _status_lines(report: Any) -> list[str]:
    status = report.status
    lines = [
        f"key provider    {status.provider}, key '{status.key_name}'",
        (f"current version {status.current_version} (versions that can decrypt: "
         f"{', '.join(map(str, status.versions)) or 'none'}; oldest {status.min_decryption_version})"),
        f"data keys       {_per_version(report.dek_counts)}",
        f"tenant keys     {_per_version(report.tenant_key_counts)}",
        f"integrity key   v{report.integrity_key_version}" if report.integrity_key_version else "integrity key   none yet",
    ]
    job = report.job
    if job.state == "running":
        lines.append(f"rewrap          running to v{job.target_version}: {job.rewrapped} rewrapped, {job.failed} failed "
                     "(resume with 'imagevault keys rewrap')")
    elif job.state == "done":
        lines.append(f"rewrap          done to v{job.target_version} at {job.finished_at} ({job.rewrapped} rewrapped)")
    if report.epoch is not None:
        epoch = report.epoch
        last = f"#{epoch.last_number} at {epoch.last_completed_at}" if epoch.last_number else "none yet"
        lines.append(f"shred epoch     last {last}; {epoch.waiting} shredded record(s) waiting"
                     + ("; due" if epoch.due else "") + (f"; running ({epoch.running.phase})"
                                                         if epoch.running.state == "running" else ""))
        warning = epoch.to_json().get("warning")
        if warning:
            lines.append(f"warning         {warning}")
    return lines


def cmd_keys_status(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        return await vault.key_report(COMMAND_LINE)

    report = run_with_vault(config, work)
    emit(args, report.to_json(), _status_lines(report))
    return 0


async def _rewrap_with_progress(vault: Any) -> Any:
    with progress_bar("rewrap") as update:
        return await vault.rewrap_keys(COMMAND_LINE, progress=update)


def _report_rewrap(args: argparse.Namespace, final: Any) -> int:
    emit(args, final.to_json(), f"rewrap {final.state} (KEK version {final.target_version}): "
                                f"{final.rewrapped} data key(s) rewrapped, {final.failed} failed")
    return 0 if final.failed == 0 else 1


def cmd_keys_rotate(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        state = await vault.rotate_keys(COMMAND_LINE, background=False)
        say(f"new key version {state.target_version}; rewrapping stored data keys")
        return await _rewrap_with_progress(vault)

    return _report_rewrap(args, run_with_vault(config, work))


def cmd_keys_rewrap(config: Config, args: argparse.Namespace) -> int:
    return _report_rewrap(args, run_with_vault(config, _rewrap_with_progress))


def _retire_plan(report: Any) -> tuple[list[int], int]:
    """The versions retiring destroys, and how many wrapped keys are still on them."""
    current = report.status.current_version
    doomed = [v for v in report.status.versions if v < current]
    stale = sum(n for v, n in report.dek_counts.items() if v < current) \
        + sum(n for v, n in report.tenant_key_counts.items() if v < current) \
        + (1 if report.integrity_key_version is not None and report.integrity_key_version < current else 0)
    return doomed, stale


def cmd_keys_retire(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        before = await vault.key_report(COMMAND_LINE)
        doomed, stale = _retire_plan(before)
        name = f"'{before.status.key_name}' ({before.status.provider})"
        if not doomed:
            say(f"retire: key {name} has no version below the current one ({before.status.current_version}); "
                "nothing to destroy")
        else:
            say(f"retire: destroys KEK {name} version(s) {', '.join(map(str, doomed))} at the KMS, for good; "
                f"version {before.status.current_version} stays.")
            say("  Afterwards unreadable: every backup snapshot and key escrow whose data keys are wrapped under those "
                "versions (snapshots taken before the last rotation's rewrap), and anything shredded meanwhile.")
        if stale and doomed:
            message = (f"{stale} wrapped key(s) are still on those versions: run 'imagevault keys rewrap' first")
            if not args.dry_run:
                raise CliError(f"retire: {message}; nothing changed")
            say(f"  {message}.")
        if args.dry_run or not doomed:
            return before, False
        confirm(args.yes, "retire", "retire")
        return await vault.retire_keys(COMMAND_LINE), True

    report, retired = run_with_vault(config, work)
    document = {**report.to_json(), "retired": retired, "dry_run": bool(args.dry_run)}
    if retired:
        human = f"key versions below {report.status.current_version} retired; versions left: " \
                f"{', '.join(map(str, report.status.versions))}"
    else:
        human = "dry run: nothing changed" if args.dry_run else "nothing retired"
    emit(args, document, human)
    return 0


def cmd_keys_epoch(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        report = await vault.key_report(COMMAND_LINE)
        epoch = report.epoch
        say(f"shred epoch: KEK '{report.status.key_name}' version {report.status.current_version} and every "
            f"tenant's blind-index key are replaced; every live key is rewrapped; versions "
            f"{', '.join(map(str, report.status.versions))} are then destroyed at the KMS. "
            f"{epoch.waiting} shredded record(s) wait for it and become unrecoverable.")
        say("Snapshots and key escrows taken before it can no longer be restored: take a new backup "
            "(and, with a local keyring, a new escrow) afterwards.")
        confirm(args.yes, "epoch", "epoch")
        with contextlib.ExitStack() as bars:
            updates: dict[str, Any] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in updates:  # one bar per phase, opened as the phase starts
                    updates[phase] = bars.enter_context(progress_bar(phase, unit="key" if phase == "rewrap" else "patient"))
                updates[phase](done, total)

            return await vault.run_epoch(COMMAND_LINE, progress=progress)

    state = run_with_vault(config, work)
    emit(args, state.to_json(), f"shred epoch {state.number} {state.state}: KEK version {state.target_version}, "
                                f"{state.rehmac_groups} patient HMAC group(s) re-keyed, {state.failed} failed")
    return 0


def cmd_keys_escrow(config: Config, args: argparse.Namespace) -> int:
    passphrase = read_passphrase(args.passphrase_file, what="escrow", twice=True)
    out = Path(args.out)

    async def work(vault: Any) -> Any:
        return await vault.escrow_keys(COMMAND_LINE, passphrase)

    data = run_with_vault(config, work)
    write_atomic(out, data)
    emit(args, {"out": str(out), "bytes": len(data)},
         f"key escrow written to {out} (mode 0600): keep it apart from the backups, with its passphrase; "
         "destroy older escrows once a newer one is safe")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="key-encryption key status, rotation and retirement").add_subparsers(
        dest="keys_command", required=True,
    )
    p = keys.add_parser("status", parents=[common], help="KEK versions and data keys per version")
    p.set_defaults(func=cmd_keys_status)
    p = keys.add_parser("rotate", parents=[common], help="new KEK version, then rewrap every stored data key (progress on stderr)")
    p.set_defaults(func=cmd_keys_rotate)
    p = keys.add_parser("rewrap", parents=[common], help="resume an interrupted rewrap")
    p.set_defaults(func=cmd_keys_rewrap)
    p = keys.add_parser("retire", parents=[common],
                        help="destroy old KEK versions at the KMS (after rewrap); shows what, asks first")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="show what would be destroyed; change nothing")
    p.set_defaults(func=cmd_keys_retire)
    p = keys.add_parser("epoch", parents=[common],
                        help="the shred epoch: rotate KEK and blind-index keys, rewrap, re-key, destroy old versions")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_keys_epoch)
    p = keys.add_parser("escrow", parents=[common],
                        help="write the local keyring's live KEK versions, sealed under a passphrase, to OUT")
    p.add_argument("out")
    p.add_argument("--passphrase-file", help="read the passphrase from this file's first line (default: ask)")
    p.set_defaults(func=cmd_keys_escrow)
    for parser in keys.choices.values():
        add_json_option(parser)
