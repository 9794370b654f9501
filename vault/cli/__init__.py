"""The ``imagevault`` command line: one module per command group, registered here.

Every command takes ``--data-dir`` and ``--config``; results that scripts consume go to stdout
(``token create`` prints the token and nothing else), messages to stderr; exit status 0 on
success, non-zero with a one-line reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from vault import __version__
from vault.cli import audit, keys, renditions, retention, server, storage, tokens, upload
from vault.cli.common import CliError, say
from vault.config import ConfigError, load_config
from vault.errors import ImageVaultError

GROUPS = (server, tokens, keys, storage, retention, audit, upload, renditions)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="data directory (env IMAGEVAULT_DATA_DIR, default ./data)")
    common.add_argument("--config", help="TOML configuration file (env IMAGEVAULT_CONFIG)")
    common.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")

    parser = argparse.ArgumentParser(prog="imagevault", description="Encrypted image vault for clinical photographs.")
    parser.add_argument("--version", action="version", version=f"imagevault {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(data_dir=args.data_dir, config_file=args.config)
        level = (args.log_level or config.log_level).upper()
        logging.basicConfig(
            level=getattr(logging, level, logging.INFO), stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return int(args.func(config, args) or 0)
    except (CliError, ConfigError) as exc:
        say(f"imagevault: {exc}")
    except ImageVaultError as exc:
        say(f"imagevault: {exc.message}")
    except KeyboardInterrupt:
        say("imagevault: interrupted")
        return 130
    return 1
