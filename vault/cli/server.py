"""``imagevault init`` and ``imagevault serve``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
from typing import Any

from vault.cli.common import StartupError, add_json_option, emit, reported, require_initialised, starting
from vault.config import Config, load_config


def cmd_init(config: Config, args: argparse.Namespace) -> int:
    """Create the data directory, its key store, bucket and index, then record its identity
    (``vault/datadir.py``) last: an identity file means a complete ``init``. On a directory that
    has one, report it and change nothing; never create a second key store."""
    from vault import components, datadir

    recorded = datadir.check(config)  # refuses a configuration the directory was not made with
    if recorded is None and datadir.has_index(config):
        datadir.record(config, None, existing=True)  # made by an older release: adopt what is there
        recorded = datadir.read(config)
    create = recorded is None

    async def setup() -> None:
        # Initialised: only check that the key store and the blob store answer (nothing made).
        keys = await components.open_key_provider(config, create=create)
        try:
            backend = await components.open_backend(config, create=create)
            try:
                await backend.check_writable()
            finally:
                await backend.close()  # also when the check fails: no unclosed connections
        finally:
            await keys.close()

    if recorded is not None:
        with starting(f"data directory {config.data_dir} is initialised, but"):
            asyncio.run(setup())
        _report_init(args, config, recorded, created=False)
        return 0

    from vault.files import make_private_dir
    from vault.services.context import restrict_data_dir

    with starting(f"cannot initialise {config.data_dir}"):
        make_private_dir(config.data_dir)
        restrict_data_dir(config)
        asyncio.run(setup())
        components.open_index(config, create=True).close()
        identity = datadir.of_config(config)
        datadir.write(config, identity)
    _report_init(args, config, identity, created=True)
    return 0


def _report_init(args: argparse.Namespace, config: Config, identity: Any, *, created: bool) -> None:
    state = "initialised" if created else "already initialised (nothing changed)"
    emit(args, {"data_dir": str(config.data_dir), "created": created, "identity": dataclasses.asdict(identity)},
         f"{state}: {config.data_dir}\n  {identity.describe()}; blob format {identity.blob_format}, "
         f"index schema {identity.index_schema}")


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from vault.api.prefork import worker_count

    overrides = {
        name: value for name, value in (
            ("listen", args.listen), ("tls_cert", args.tls_cert), ("tls_key", args.tls_key),
            ("tls_client_ca", args.tls_client_ca), ("workers", args.workers),
        ) if value is not None and value != ""
    }
    if overrides:
        config = load_config(data_dir=config.data_dir, config_file=args.config, **overrides)
    require_initialised(config)
    started = False

    def ready() -> None:
        nonlocal started
        started = True
        if args.ready_fd is not None:
            try:
                os.write(args.ready_fd, b"ready\n")
                os.close(args.ready_fd)
            except OSError:
                pass  # whoever waited has gone; the daemon serves regardless

    workers = worker_count(config.workers)
    try:
        if workers == 1:
            from vault.api.app import run

            run(config, shutdown_timeout=args.shutdown_timeout, on_ready=ready)
        else:
            from vault.api.app import tls_context
            from vault.api.prefork import serve_workers

            with starting("cannot start the daemon"):
                return serve_workers(config, workers, _worker_main(config, args), shutdown_timeout=args.shutdown_timeout,
                                     on_ready=ready, preflight=lambda: tls_context(config))
    except StartupError:
        raise
    except Exception:
        if started:
            raise
        with starting("cannot start the daemon"):
            raise
    return 0


def _worker_main(config: Config, args: argparse.Namespace) -> Any:
    """One worker's life (in the forked process): the daemon on the inherited socket, its
    failures reported as ``main`` reports them; returns the exit status."""
    from vault.api.app import run

    def work(role: Any, sock: Any, ready: Any) -> int:
        started = False
        if args.ready_fd is not None:  # the parent's to write; a copy here would hold it open
            try:
                os.close(args.ready_fd)
            except OSError:
                pass

        def listening() -> None:
            nonlocal started
            started = True
            ready()

        def serve() -> int:
            try:
                run(config, shutdown_timeout=args.shutdown_timeout, on_ready=listening, listen_socket=sock, role=role)
            except Exception:
                if started:
                    raise
                with starting("cannot start the daemon"):
                    raise
            return 0

        return reported(serve)

    return work


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("init", parents=[common],
                       help="create the data directory, key store and index, and record its identity (idempotent)")
    add_json_option(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", parents=[common], help="run the daemon")
    p.add_argument("--listen", help="HOST:PORT (env IMAGEVAULT_LISTEN, default 127.0.0.1:8080)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes serving the socket (env IMAGEVAULT_WORKERS; default: one per core; 1: no parent)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS (TLS 1.2+)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates it signed (mutual TLS)")
    p.add_argument("--ready-fd", type=int, default=None,
                   help="write 'ready' to this inherited file descriptor (and close it) once listening")
    p.set_defaults(func=cmd_serve)
