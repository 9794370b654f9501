"""``imagevault keys status|rotate|rewrap|retire``: the key-encryption key's lifecycle."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vault.cli.common import COMMAND_LINE, progress_bar, run_with_vault, say
from vault.config import Config


def cmd_keys_status(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        return await vault.key_report(COMMAND_LINE)

    print(json.dumps(run_with_vault(config, work).to_json(), indent=2))
    return 0


async def _rewrap_with_progress(vault: Any) -> Any:
    bar, update = progress_bar("rewrap")
    try:
        return await vault.rewrap_keys(COMMAND_LINE, progress=update)
    finally:
        bar.close()


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
