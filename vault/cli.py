"""The ``imagevault`` command line.

Every command takes ``--data-dir`` and ``--config``; results that scripts consume go to stdout
(``token create`` prints the token and nothing else), messages to stderr; exit status 0 on
success, non-zero with a one-line reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vault import __version__
from vault.auth import parse_role
from vault.config import Config, ConfigError, load_config
from vault.errors import ImageVaultError

log = logging.getLogger("vault.cli")


class CliError(Exception):
    """A failure reported as one line on stderr with exit status 1."""


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _initialised(config: Config) -> bool:
    return (config.index_dir / "data.mdb").exists()


def _require_initialised(config: Config) -> None:
    if not _initialised(config):
        raise CliError(f"data directory {config.data_dir} is not initialised; run 'imagevault init' first")


# commands -------------------------------------------------------------------------------
def cmd_init(config: Config, args: argparse.Namespace) -> int:
    from vault import components
    from vault.index.lmdb import Index

    config.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.data_dir, 0o700)
    fresh = not _initialised(config)

    async def setup() -> None:
        keys = await components.open_key_provider(config, create=True)
        try:
            backend = await components.open_backend(config, create=True)
            try:
                await backend.check_writable()
            finally:
                await backend.close()  # also when the check fails: no unclosed connections
        finally:
            await keys.close()

    asyncio.run(setup())
    Index(config.index_dir, map_size=config.lmdb_map_size).close()
    _say(f"{'initialised' if fresh else 'already initialised'}: {config.data_dir} (kms={config.kms}, store={config.store})")
    return 0


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from vault.api.app import run

    overrides = {
        name: value for name, value in (
            ("listen", args.listen), ("tls_cert", args.tls_cert), ("tls_key", args.tls_key),
            ("tls_client_ca", args.tls_client_ca),
        ) if value
    }
    if overrides:
        config = load_config(data_dir=config.data_dir, config_file=args.config, **overrides)
    _require_initialised(config)
    run(config, shutdown_timeout=args.shutdown_timeout)
    return 0


def _token_store(config: Config) -> Any:
    """The token store over the index, auditing into the trail; ``close()`` the first value."""
    import contextlib
    from datetime import datetime, timezone

    from vault.audit.store import AuditLog
    from vault.index.lmdb import Index
    from vault.tokens import TokenStore

    _require_initialised(config)
    clock = lambda: datetime.now(timezone.utc)  # noqa: E731
    resources = contextlib.ExitStack()
    index = Index(config.index_dir, map_size=config.lmdb_map_size)
    resources.callback(index.close)
    audit = AuditLog(config.audit_dir, clock, map_size=config.lmdb_map_size)
    resources.callback(audit.close)
    return resources, TokenStore(index, clock, audit=audit)


def cmd_token_create(config: Config, args: argparse.Namespace) -> int:
    resources, store = _token_store(config)
    try:
        token, info = store.create_sync(args.tenant, parse_role(args.role), args.name, args.ttl, args.idle_timeout)
    finally:
        resources.close()
    print(token)
    _say(f"token '{info.name}' created: tenant={info.tenant} role={info.role.value} expires={info.expires_at or 'never'}")
    return 0


def cmd_token_list(config: Config, args: argparse.Namespace) -> int:
    resources, store = _token_store(config)
    try:
        tokens = store.list()
    finally:
        resources.close()
    if args.json:
        print(json.dumps([t.to_json() for t in tokens], indent=2))
        return 0
    print(f"{'NAME':24} {'TENANT':16} {'ROLE':10} {'CREATED':22} {'EXPIRES':22} STATE")
    for t in tokens:
        state = "revoked" if t.revoked_at else "active"
        print(f"{t.name:24} {t.tenant:16} {t.role.value:10} {t.created_at[:19]:22} {(t.expires_at or 'never')[:19]:22} {state}")
    return 0


def cmd_token_revoke(config: Config, args: argparse.Namespace) -> int:
    resources, store = _token_store(config)
    try:
        count = store.revoke_sync(args.name)
    finally:
        resources.close()
    _say(f"revoked {count} token(s) named '{args.name}'")
    return 0


def _run_with_vault(config: Config, work: Any) -> Any:
    """Open the service (keys + store + index) for one CLI command, then close it."""
    from vault.service import Vault

    _require_initialised(config)

    async def runner() -> Any:
        vault = await Vault.open(config)
        try:
            return await work(vault)
        finally:
            await vault.close()

    return asyncio.run(runner())


def _cli_operator() -> Any:
    from vault.auth import Principal, Role

    # Whoever can read the data directory and key material already holds every key; the CLI
    # acts as the operator role for the admin commands.
    return Principal("-", Role.OPERATOR, "cli")


def _progress(description: str, unit: str = "key") -> Any:
    from tqdm import tqdm

    bar = tqdm(desc=description, unit=unit, file=sys.stderr, disable=None)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def cmd_keys_status(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        return await vault.key_report(_cli_operator())

    print(json.dumps(_run_with_vault(config, work).to_json(), indent=2))
    return 0


async def _rewrap_with_progress(vault: Any) -> Any:
    bar, update = _progress("rewrap")
    try:
        return await vault.rotation.run(progress=update)
    finally:
        bar.close()


def _report_rewrap(final: Any) -> int:
    _say(f"rewrap {final.state}: {final.rewrapped} rewrapped, {final.failed} failed")
    print(json.dumps(final.to_json()))
    return 0 if final.failed == 0 else 1


def cmd_keys_rotate(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        state = await vault.rotate_keys(_cli_operator(), background=False)
        _say(f"new key version {state.target_version}; rewrapping stored data keys")
        return await _rewrap_with_progress(vault)

    return _report_rewrap(_run_with_vault(config, work))


def cmd_keys_rewrap(config: Config, args: argparse.Namespace) -> int:
    return _report_rewrap(_run_with_vault(config, _rewrap_with_progress))


def cmd_keys_retire(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        return await vault.retire_keys(_cli_operator())

    report = _run_with_vault(config, work)
    _say(f"key versions below {report.status.current_version} retired")
    print(json.dumps(report.to_json(), indent=2))
    return 0


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    from vault.maintenance import scrub

    async def work(vault: Any) -> Any:
        bar, update = _progress("verify", unit="blob")
        try:
            return await scrub(vault, sample=args.sample, progress=update)
        finally:
            bar.close()

    report = _run_with_vault(config, work)
    print(json.dumps(report.to_json(), indent=2))
    if not report.ok:
        _say(f"verify: {len(report.corrupt)} corrupt, {len(report.missing)} missing blob(s), "
             f"{len(report.unreadable_keys)} unreadable key(s) among {report.checked} checked")
        return 2
    _say(f"verify: {report.checked} blob(s) authenticated, no corruption")
    return 0


def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    from vault.backup import backup

    async def work(vault: Any) -> Any:
        bar, update = _progress("backup", unit="blob")
        try:
            return await backup(vault, Path(args.dest), include_master_key=not args.exclude_master_key, progress=update)
        finally:
            bar.close()

    report = _run_with_vault(config, work)
    print(json.dumps(report.to_json(), indent=2))
    _say(f"backup snapshot {report.snapshot}: {report.records} records, {report.blobs_copied} blob(s) copied, "
         f"{report.blobs_already_present} already present")
    return 0


def cmd_restore(config: Config, args: argparse.Namespace) -> int:
    from vault.backup import restore

    bar, update = _progress("restore", unit="blob")
    try:
        report = asyncio.run(restore(config, Path(args.src), snapshot=args.snapshot, keys_from=args.keys_from, progress=update))
    finally:
        bar.close()
    print(json.dumps(report.to_json(), indent=2))
    _say(f"restored {report.records} records and {report.blobs_restored} blob(s) from snapshot {report.snapshot} "
         f"with keys from {report.keys_from}; {len(report.dropped_unopenable_keys)} record(s) with retired keys dropped")
    return 0 if not report.missing_blobs else 2


def cmd_gc(config: Config, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vault.auth import parse_ttl

    min_age = parse_ttl(args.min_age)
    if min_age is None:
        raise CliError("--min-age must be a duration such as 1h or 30m")

    async def work(vault: Any) -> Any:
        bar = tqdm(desc="gc", unit="blob", file=sys.stderr, disable=None)

        def update(scanned: int, total: int | None) -> None:
            bar.total = total
            bar.n = scanned
            bar.refresh()

        try:
            return await vault.collect_garbage(_cli_operator(), min_age=min_age, progress=update)
        finally:
            bar.close()

    result = _run_with_vault(config, work)
    _say(f"gc: {result.scanned} blob(s) scanned, {result.removed} orphan(s) removed, "
         f"{result.kept_recent} recent orphan(s) kept, {result.temporary} temporary leftover(s) removed")
    print(json.dumps(result.to_json()))
    return 0


# parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="data directory (env IMAGEVAULT_DATA_DIR, default ./data)")
    common.add_argument("--config", help="TOML configuration file (env IMAGEVAULT_CONFIG)")
    common.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")

    parser = argparse.ArgumentParser(prog="imagevault", description="Encrypted image vault for clinical photographs.")
    parser.add_argument("--version", action="version", version=f"imagevault {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", parents=[common], help="create the data directory and key material (idempotent)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", parents=[common], help="run the daemon")
    p.add_argument("--listen", help="HOST:PORT (env IMAGEVAULT_LISTEN, default 127.0.0.1:8080)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS (TLS 1.2+)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates it signed (mutual TLS)")
    p.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="manage bearer tokens").add_subparsers(dest="token_command", required=True)
    p = token.add_parser("create", parents=[common], help="create a token and print it (once)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--role", required=True, help="clinician, dpo, researcher, operator or auditor")
    p.add_argument("--name", required=True)
    p.add_argument("--ttl", default=None, help="lifetime such as 90d, 12h (default: no expiry)")
    p.add_argument("--idle-timeout", default=None, help="for interactive sessions: expire after this long unused (e.g. 30m)")
    p.set_defaults(func=cmd_token_create)
    p = token.add_parser("list", parents=[common], help="list tokens (never their values)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_token_list)
    p = token.add_parser("revoke", parents=[common], help="revoke the active token(s) with this name")
    p.add_argument("name")
    p.set_defaults(func=cmd_token_revoke)

    keys = sub.add_parser("keys", help="key-encryption key status, rotation and retirement").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("status", parents=[common], help="KEK versions and data keys per version")
    p.set_defaults(func=cmd_keys_status)
    p = keys.add_parser("rotate", parents=[common], help="new KEK version, then rewrap every stored data key (progress on stderr)")
    p.set_defaults(func=cmd_keys_rotate)
    p = keys.add_parser("rewrap", parents=[common], help="resume an interrupted rewrap")
    p.set_defaults(func=cmd_keys_rewrap)
    p = keys.add_parser("retire", parents=[common], help="make old KEK versions unusable (after rewrap)")
    p.set_defaults(func=cmd_keys_retire)
    p = sub.add_parser("backup", parents=[common], help="online backup: index snapshot + keys + incremental blobs")
    p.add_argument("dest")
    p.add_argument("--exclude-master-key", action="store_true", help="leave the local keyring's master key out (back it up apart)")
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser("restore", parents=[common], help="restore a backup into an empty data directory")
    p.add_argument("src")
    p.add_argument("--snapshot", help="index snapshot to restore (default: newest)")
    p.add_argument("--keys-from", help="snapshot whose key material to use (default: newest)")
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser("verify", parents=[common], help="decrypt and authenticate every blob (scrub for bit-rot)")
    p.add_argument("--sample", type=int, default=None, help="check only this many random records")
    p.set_defaults(func=cmd_verify)

    from vault.cli_privacy import add_privacy_commands

    add_privacy_commands(sub, common)  # retention sweep, audit verify

    p = sub.add_parser("gc", parents=[common], help="remove orphan blobs (no record points at them); progress on stderr")
    p.add_argument("--min-age", default="1h",
                   help="keep orphans younger than this (default 1h): uploads in flight commit their blob before their record")
    p.set_defaults(func=cmd_gc)
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
        _say(f"imagevault: {exc}")
    except ImageVaultError as exc:
        _say(f"imagevault: {exc.message}")
    except KeyboardInterrupt:
        _say("imagevault: interrupted")
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())


