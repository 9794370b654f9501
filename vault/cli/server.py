"""``imagevault init`` and ``imagevault serve``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from vault.cli.common import initialised, require_initialised, say
from vault.config import Config, load_config


def cmd_init(config: Config, args: argparse.Namespace) -> int:
    from vault import components
    from vault.files import make_private_dir
    from vault.index.lmdb import Index
    from vault.services.context import restrict_data_dir

    make_private_dir(config.data_dir)
    restrict_data_dir(config)
    fresh = not initialised(config)

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
    say(f"{'initialised' if fresh else 'already initialised'}: {config.data_dir} (kms={config.kms}, store={config.store})")
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
    require_initialised(config)
    run(config, shutdown_timeout=args.shutdown_timeout)
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("init", parents=[common], help="create the data directory and key material (idempotent)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", parents=[common], help="run the daemon")
    p.add_argument("--listen", help="HOST:PORT (env IMAGEVAULT_LISTEN, default 127.0.0.1:8080)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS (TLS 1.2+)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates it signed (mutual TLS)")
    p.set_defaults(func=cmd_serve)
