"""``imagevault renditions backfill``: thumbnails and previews for records stored without them."""

from __future__ import annotations

import argparse
from typing import Any

from vault.cli.common import COMMAND_LINE, add_json_option, emit, progress_bar, run_with_vault
from vault.config import Config


def cmd_renditions_backfill(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        with progress_bar("renditions", unit="image") as update:
            return await vault.backfill_renditions(COMMAND_LINE, progress=update)

    report = run_with_vault(config, work)
    emit(args, report.to_json(), f"renditions: {report.processed} image(s) processed: {report.ready} ready, "
         f"{report.failed} failed, {report.unavailable} not renderable, {report.still_queued} still queued")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    renditions = sub.add_parser("renditions", help="thumbnails and previews").add_subparsers(
        dest="renditions_command", required=True)
    p = renditions.add_parser("backfill", parents=[common],
                              help="make the renditions every record is missing (resumable: run it again to continue)")
    add_json_option(p)
    p.set_defaults(func=cmd_renditions_backfill)
