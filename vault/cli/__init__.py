"""The ``imagevault`` command line: one module per command group, registered here.

Every command takes ``--data-dir``, ``--config`` and ``--log-level``, before or after the
sub-command (``imagevault --data-dir D keys status`` as well as ``imagevault keys status
--data-dir D``); every command but ``serve`` takes ``--json``. Results go to stdout, as text for
people or, with ``--json``, as JSON for scripts (``token create`` prints the token and nothing
else either way, unless ``--json``); messages to stderr. Exit status: 0 on success; 78
(EX_CONFIG) with one line on stderr when the configuration is wrong or the command cannot start
(data directory, key provider, blob store, listening socket, TLS files); otherwise non-zero with
one line on stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vault import __version__
from vault.cli import audit, index, keys, renditions, retention, server, storage, tokens, upload
from vault.cli.common import reported
from vault.config import load_config
from vault.logs import configure_logging

GROUPS = (server, tokens, keys, storage, retention, audit, upload, renditions, index)


def _global_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--data-dir", default=default, help="data directory (env IMAGEVAULT_DATA_DIR, default ./data)")
    parser.add_argument("--config", default=default, help="TOML configuration file (env IMAGEVAULT_CONFIG)")
    parser.add_argument("--log-level", default=default, help="DEBUG, INFO, WARNING or ERROR")


def build_parser() -> argparse.ArgumentParser:
    # After the sub-command the options default to SUPPRESS, so that one given before it stays.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)

    parser = argparse.ArgumentParser(prog="imagevault", description="Encrypted image vault for clinical photographs.")
    parser.add_argument("--version", action="version", version=f"imagevault {__version__}")
    _global_options(parser, None)
    parser.add_argument("--json", action="store_true", help="print results as JSON (for scripts) instead of text")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def run() -> int:
        config = load_config(data_dir=args.data_dir, config_file=args.config)
        configure_logging(args.log_level or config.log_level, config.log_format)
        return int(args.func(config, args) or 0)

    return reported(run)
