"""``imagevault renditions backfill``: thumbnails and previews for records stored without them."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vault.cli.common import COMMAND_LINE, progress_bar, run_with_vault, say
from vault.config import Config


def cmd_renditions_backfill(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        with progress_bar("renditions", unit="image") as update:
            return await vault.backfill_renditions(COMMAND_LINE, progress=update)

    report = run_with_vault(config, work)
    say(f"{report.processed} image(s) processed: {report.ready} ready, {report.failed} failed, "
        f"{report.unavailable} not renderable, {report.still_queued} still queued")
    print(json.dumps(report.to_json()))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    renditions = sub.add_parser("renditions", help="thumbnails and previews").add_subparsers(
        dest="renditions_command", required=True)
    p = renditions.add_parser("backfill", parents=[common],
                              help="make the renditions every record is missing (resumable: run it again to continue)")
    p.set_defaults(func=cmd_renditions_backfill)
