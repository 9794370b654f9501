"""The aiohttp application factory. ``create_app(config)`` builds it; ``serve`` runs it.

Resources are ``cleanup_ctx`` generators (setup, ``yield``, teardown) so shutdown order is
guaranteed: the service (index, keys, store) closes after the last request has finished.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from vault.api.connections import ConnectionGuard, GuardedAppRunner
from vault.api.handlers import (
    admin,
    audit,
    console,
    images,
    patients,
    retention,
    search,
    session,
    system,
    uploads,
)
from vault.api.keys import (
    CONFIG,
    CONSOLE_OIDC,
    IN_FLIGHT,
    REQUEST_ID,
    SESSIONS,
    VAULT,
    InFlight,
)
from vault.api.middleware import (
    HEADER_FIELD_LIMIT,
    add_request_id,
    authenticate,
    limit_header_fields,
    request_context,
    security_headers,
)
from vault.api.prefork import PARENT_POLL_SECONDS, SINGLE, WorkerRole, parent_gone
from vault.api.sessions import SessionStore
from vault.config import Config, ConfigError
from vault.identity.authorize import AuthorizationCodeFlow
from vault.logs import REQUEST_ID as LOGGED_REQUEST_ID
from vault.service import Vault


class AccessLogger(AbstractAccessLogger):
    """Method, path and status only: query strings (a deletion ``reason``) are never logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # Called after the request's middleware has finished: name the request for JSON logs here.
        logged_as = LOGGED_REQUEST_ID.set(request.get(REQUEST_ID))
        try:
            self.logger.info(
                "%s %s %s %d %.1fms id=%s",
                request.remote, request.method, request.rel_url.path, response.status, time * 1000,
                request.get(REQUEST_ID, "-"),
            )
        finally:
            LOGGED_REQUEST_ID.reset(logged_as)


# aiohttp buffers up to twice this much of a request body before it pauses reading the socket.
# Its default (64 KiB) makes a large upload arrive in ~128 KiB pieces, each a round of
# pause/resume, parser and multipart work on the event loop: at 512 KiB the daemon spent ~10%
# less CPU per uploaded GB (bench, 16 concurrent uploads). Memory: at most ~1 MiB per upload
# connection, and uploads are capped by max_concurrent_uploads.
READ_BUFSIZE = 512 * 1024
# Options of each connection's protocol. The request line and a header field have limits of
# different sizes so that a parse error tells which one was exceeded: 414 for the request
# line, 431 for a header (vault/api/connections.py).
HANDLER_ARGS = {"max_field_size": HEADER_FIELD_LIMIT, "max_line_size": 32768, "max_headers": 128, "read_bufsize": READ_BUFSIZE}


def handler_args(config: Config) -> dict[str, int]:
    """``HANDLER_ARGS`` with a header field limit that fits the largest valid Upload-Metadata
    (the metadata JSON in base64, 4/3 of its bytes, and room for the content type). The parser
    runs before routing, so this limit is the connection's; ``limit_header_fields`` holds every
    route but the tus ones to ``HEADER_FIELD_LIMIT``."""
    metadata_field = 4 * -(-config.max_metadata_bytes // 3) + 1024
    return {**HANDLER_ARGS, "max_field_size": max(HEADER_FIELD_LIMIT, metadata_field)}


def create_app(config: Config, *, vault: Vault | None = None, role: WorkerRole = SINGLE) -> web.Application:
    """Build the application; opens (and closes) its own ``Vault`` unless one is given.
    ``role``: a worker of ``serve --workers`` neither locks the data directory (its parent
    holds the lock) nor, unless it is the first, recovers."""
    app = web.Application(
        middlewares=[request_context, limit_header_fields, authenticate],
        client_max_size=1024 * 1024,
        handler_args=handler_args(config),
    )
    app[CONFIG] = config
    app[IN_FLIGHT] = InFlight()
    app[SESSIONS] = SessionStore(idle_timeout=config.console_idle_timeout, lifetime=config.console_session_lifetime,
                                 max_sessions=config.console_max_sessions)

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        owned = vault is None
        app[VAULT] = (  # type: ignore[assignment]
            await Vault.open(config, daemon=True, lock=role.lock, recover=role.recover) if owned else vault
        )
        app[SESSIONS].attach(app[VAULT].index, lambda: app[VAULT].clock().timestamp())
        if CONSOLE_OIDC in app and app[VAULT].index.seal is not None:
            app[CONSOLE_OIDC].verifier_of = app[VAULT].index.seal.pkce_verifier
        app[VAULT].start_background()  # rewrap resume, retention sweeper, audit head witness
        yield
        await app[VAULT].stop_background()
        if owned:
            await app[VAULT].close()

    app.cleanup_ctx.append(service_ctx)
    if config.console_oidc_client_id is not None:
        app[CONSOLE_OIDC] = AuthorizationCodeFlow(config)

        async def close_oidc(app: web.Application) -> None:
            await app[CONSOLE_OIDC].close()

        app.on_cleanup.append(close_oidc)
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(uploads.tus_headers)
    app.on_response_prepare.append(security_headers)
    r = app.router
    r.add_post("/v1/images", images.upload_image)
    r.add_route("OPTIONS", "/v1/uploads", uploads.options_uploads)
    r.add_post("/v1/uploads", uploads.create_upload)
    r.add_head("/v1/uploads/{id}", uploads.head_upload)
    r.add_patch("/v1/uploads/{id}", uploads.patch_upload)
    r.add_delete("/v1/uploads/{id}", uploads.delete_upload)
    r.add_get("/v1/images/{id}", images.get_image, allow_head=True)
    r.add_delete("/v1/images/{id}", images.delete_image)
    r.add_get("/v1/images/{id}/metadata", images.get_metadata)
    r.add_get("/v1/images/{id}/thumbnail", images.get_thumbnail, allow_head=True)
    r.add_get("/v1/images/{id}/preview", images.get_preview, allow_head=True)
    r.add_patch("/v1/images/{id}/metadata", images.patch_metadata)
    r.add_post("/v1/search", search.search)
    r.add_get("/v1/admin/stats", system.admin_stats)
    r.add_get("/v1/admin/keys", admin.key_status)
    r.add_post("/v1/admin/keys/rotate", admin.rotate_keys)
    r.add_post("/v1/admin/keys/retire", admin.retire_keys)
    r.add_post("/v1/admin/keys/epoch", admin.start_epoch)
    r.add_post("/v1/patients/erase", patients.erase_patient)
    r.add_post("/v1/patients/legal-hold", patients.legal_hold)
    r.add_post("/v1/patients/export", patients.export_patient)
    r.add_post("/v1/patients/access-report", patients.access_report)
    r.add_post("/v1/admin/retention/sweep", retention.sweep)
    r.add_get("/v1/audit", audit.list_entries)
    r.add_get("/v1/audit/verify", audit.verify)
    r.add_get("/v1/info", system.info)
    r.add_get("/healthz", system.healthz)
    r.add_get("/readyz", system.readyz)
    r.add_get("/metrics", system.metrics)
    r.add_get("/openapi.json", system.openapi)
    r.add_post("/v1/session", session.start_session)
    r.add_get("/v1/session", session.read_session)
    r.add_delete("/v1/session", session.end_session)
    r.add_get("/v1/session/oidc", session.oidc_begin)
    r.add_get("/v1/session/oidc/callback", session.oidc_callback)
    r.add_get("/", console.to_console)
    r.add_get("/console", console.to_console)
    r.add_get("/console/", console.index)
    r.add_get("/console/{name}", console.asset)
    return app


def tls_context(config: Config) -> ssl.SSLContext | None:
    """TLS 1.2+ with forward-secret AEAD suites only; optional client certificates (mTLS)."""
    if not config.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # TLS 1.2 suites (1.3 suites are all AEAD and not configurable here).
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=config.tls_client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS material: {exc.__class__.__name__}") from exc
    return context


def run(
    config: Config, *, shutdown_timeout: float = 30.0, on_ready: Callable[[], None] | None = None,
    listen_socket: socket.socket | None = None, role: WorkerRole = SINGLE,
) -> None:
    """Run the daemon until SIGTERM/SIGINT, then drain: stop accepting, let in-flight requests
    finish (at most ``shutdown_timeout`` seconds), flush the index, exit.

    aiohttp's own shutdown cancels handlers that are still reading a request body, which would
    turn an upload in progress into a dropped connection; so the drain happens here, before
    aiohttp's shutdown starts.

    Start-up checks what can fail cheaply first (TLS files, the listening address) and only
    then opens the service; ``on_ready`` is called once the socket listens, so whoever prints a
    banner or a token does so only for a daemon that started. A socket that cannot be bound,
    or TLS files that cannot be loaded, raise ``ConfigError``.

    A worker of ``serve --workers`` (``vault.api.prefork``) gets the parent's ``listen_socket``
    and its ``role``, and also stops when its parent is gone.
    """
    import uvloop

    uvloop.install()
    asyncio.run(_serve(config, shutdown_timeout, on_ready, listen_socket, role))


def _check_listen_address(host: str, port: int) -> None:
    """Bind and release the address (as the server will: SO_REUSEADDR), before the service is
    opened: an address in use is refused at once, before recovery or the KMS run."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    import os

    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


async def _serve(
    config: Config, shutdown_timeout: float, on_ready: Callable[[], None] | None,
    listen_socket: socket.socket | None, role: WorkerRole,
) -> None:
    import signal

    log = logging.getLogger("vault")
    host, _, port = config.listen.rpartition(":")
    ssl_context = tls_context(config)
    if listen_socket is None:
        _check_listen_address(host.strip("[]"), int(port))
    app = create_app(config, role=role)
    guard = ConnectionGuard(header_timeout=config.header_timeout, max_connections=config.max_connections)
    runner = GuardedAppRunner(
        app, guard=guard, access_log_class=AccessLogger, handle_signals=False, shutdown_timeout=shutdown_timeout,
        keepalive_timeout=config.keepalive_timeout, **handler_args(config),
    )
    _raise_open_files_limit(config.max_connections)
    await runner.setup()
    try:
        site: web.BaseSite
        if listen_socket is not None:
            site = web.SockSite(runner, listen_socket, ssl_context=ssl_context)
        else:
            site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {config.listen}: {_reason(exc)}") from None
        log.info(
            "%slistening on %s://%s%s", f"worker {role.number}: " if role.number else "",
            "https" if ssl_context else "http", config.listen,
            " (client certificates required)" if config.tls_client_ca else "",
        )
        if on_ready is not None:
            on_ready()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT) if role.parent is None else (signal.SIGTERM,):
            loop.add_signal_handler(signum, stop.set)
        watch = asyncio.ensure_future(_watch_parent(role.parent, stop)) if role.parent is not None else None
        await stop.wait()
        if watch is not None:
            watch.cancel()
        in_flight = app[IN_FLIGHT]
        log.info("shutting down: no new connections; waiting for %d request(s) in flight", in_flight.count)
        await site.stop()
        try:
            await asyncio.wait_for(in_flight.idle.wait(), timeout=shutdown_timeout)
        except asyncio.TimeoutError:
            log.warning("shutdown: %d request(s) still running after %.0f s; cancelling them", in_flight.count, shutdown_timeout)
    finally:
        await runner.cleanup()
        log.info("stopped")


async def _watch_parent(parent: int | None, stop: asyncio.Event) -> None:
    """A worker whose parent ended (killed, say) drains and stops like on SIGTERM: nobody
    would restart it, stop it or hold the listening socket's address for a new start."""
    while not parent_gone(parent):
        await asyncio.sleep(PARENT_POLL_SECONDS)
    logging.getLogger("vault").warning("the parent process is gone; stopping")
    stop.set()


def _raise_open_files_limit(max_connections: int) -> None:
    """Lift the soft limit on open files towards the hard one: each connection is a descriptor,
    and the common default soft limit (1024) would run out before ``max_connections`` does."""
    import resource

    wanted = max_connections + 1024  # index, blobs being written or read, KMS and S3 sockets
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        logging.getLogger("vault").warning(
            "open-file limit %d is below max_connections + 1024 (%d): connections may fail before the cap", target, wanted,
        )
