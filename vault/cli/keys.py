"""``imagevault keys status|rotate|rewrap|retire|epoch|escrow``: the key-encryption key's lifecycle."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from vault.cli.common import COMMAND_LINE, confirm, progress_bar, read_passphrase, run_with_vault, say
from vault.config import Config
from vault.files import write_atomic


def cmd_keys_status(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        return await vault.key_report(COMMAND_LINE)

    print(json.dumps(run_with_vault(config, work).to_json(), indent=2))
    return 0


async def _rewrap_with_progress(vault: Any) -> Any:
    with progress_bar("rewrap") as update:
        return await vault.rewrap_keys(COMMAND_LINE, progress=update)


def _report_rewrap(final: Any) -> int:
    say(f"rewrap {final.state}: {final.rewrapped} rewrapped, {final.failed} failed")
    print(json.dumps(final.to_json()))
    return 0 if final.failed == 0 else 1


def cmd_keys_rotate(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        state = await vault.rotate_keys(COMMAND_LINE, background=False)
        say(f"new key version {state.target_version}; rewrapping stored data keys")
        return await _rewrap_with_progress(vault)

    return _report_rewrap(run_with_vault(config, work))


def cmd_keys_rewrap(config: Config, args: argparse.Namespace) -> int:
    return _report_rewrap(run_with_vault(config, _rewrap_with_progress))


def cmd_keys_retire(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        return await vault.retire_keys(COMMAND_LINE)

    report = run_with_vault(config, work)
    say(f"key versions below {report.status.current_version} retired")
    print(json.dumps(report.to_json(), indent=2))
    return 0


def cmd_keys_epoch(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        report = await vault.key_report(COMMAND_LINE)
        epoch = report.epoch
        say(f"shred epoch: KEK '{report.status.key_name}' version {report.status.current_version} and every "
            f"tenant's blind-index key are replaced; every live key is rewrapped; versions below the new one "
            f"are destroyed at the KMS. {epoch.waiting} shredded record(s) wait for it.")
        say("Snapshots taken before it can no longer be restored: take a new backup afterwards.")
        if not args.yes:
            confirm("epoch")
        with contextlib.ExitStack() as bars:
            updates: dict[str, Any] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in updates:  # one bar per phase, opened as the phase starts
                    updates[phase] = bars.enter_context(progress_bar(phase, unit="key" if phase == "rewrap" else "patient"))
                updates[phase](done, total)

            return await vault.run_epoch(COMMAND_LINE, progress=progress)

    state = run_with_vault(config, work)
    say(f"shred epoch {state.number} {state.state}: KEK version {state.target_version}, "
        f"{state.rehmac_groups} patient HMAC group(s) re-keyed")
    print(json.dumps(state.to_json()))
    return 0


def cmd_keys_escrow(config: Config, args: argparse.Namespace) -> int:
    passphrase = read_passphrase(args.passphrase_file, what="escrow", twice=True)
    out = Path(args.out)

    async def work(vault: Any) -> Any:
        return await vault.escrow_keys(COMMAND_LINE, passphrase)

    data = run_with_vault(config, work)
    write_atomic(out, data)
    say(f"key escrow written to {out} (mode 0600): keep it apart from the backups, with its passphrase; "
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
    p = keys.add_parser("retire", parents=[common], help="make old KEK versions unusable (after rewrap)")
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
