"""The aiohttp application factory. ``create_app(config)`` builds it; ``serve`` runs it.

Resources are ``cleanup_ctx`` generators (setup, ``yield``, teardown) so shutdown order is
guaranteed: the service (index, keys, store) closes after the last request has finished.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from vault.api.background import retention_sweeper_ctx
from vault.api.handlers import admin, images, search, system
from vault.api.handlers import audit, patients, retention
from vault.api.keys import CONFIG, REQUEST_ID, VAULT
from vault.api.middleware import add_request_id, authenticate, request_context
from vault.config import Config
from vault.service import Vault


class AccessLogger(AbstractAccessLogger):
    """Method, path and status only: query strings (a deletion ``reason``) are never logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %d %.1fms id=%s",
            request.remote, request.method, request.rel_url.path, response.status, time * 1000,
            request.get(REQUEST_ID, "-"),
        )


def create_app(config: Config, *, vault: Vault | None = None) -> web.Application:
    """Build the application; opens (and closes) its own ``Vault`` unless one is given."""
    app = web.Application(
        middlewares=[request_context, authenticate],
        client_max_size=1024 * 1024,
        handler_args={"max_field_size": 16384, "max_line_size": 16384},
    )
    app[CONFIG] = config

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        owned = vault is None
        app[VAULT] = await Vault.open(config) if owned else vault  # type: ignore[assignment]
        app[VAULT].start_background()
        yield
        await app[VAULT].stop_background()
        if owned:
            await app[VAULT].close()

    app.cleanup_ctx.append(service_ctx)
    app.cleanup_ctx.append(retention_sweeper_ctx)  # after the service: stopped before it
    app.on_response_prepare.append(add_request_id)
    r = app.router
    r.add_post("/v1/images", images.upload_image)
    r.add_get("/v1/images/{id}", images.get_image, allow_head=True)
    r.add_delete("/v1/images/{id}", images.delete_image)
    r.add_get("/v1/images/{id}/metadata", images.get_metadata)
    r.add_patch("/v1/images/{id}/metadata", images.patch_metadata)
    r.add_post("/v1/search", search.search)
    r.add_get("/v1/admin/stats", system.admin_stats)
    r.add_get("/v1/admin/keys", admin.key_status)
    r.add_post("/v1/admin/keys/rotate", admin.rotate_keys)
    r.add_post("/v1/admin/keys/retire", admin.retire_keys)
    # privacy operations (issue 4)
    r.add_post("/v1/patients/erase", patients.erase_patient)
    r.add_post("/v1/patients/legal-hold", patients.legal_hold)
    r.add_post("/v1/patients/export", patients.export_patient)
    r.add_post("/v1/admin/retention/sweep", retention.sweep)
    r.add_get("/v1/audit", audit.list_entries)
    r.add_get("/v1/audit/verify", audit.verify)
    r.add_get("/v1/info", system.info)
    r.add_get("/healthz", system.healthz)
    r.add_get("/readyz", system.readyz)
    r.add_get("/metrics", system.metrics)
    r.add_get("/openapi.json", system.openapi)
    return app


def run(config: Config, *, shutdown_timeout: float = 30.0, print_ready: bool = True) -> None:
    """Run the daemon until SIGTERM/SIGINT; in-flight requests get ``shutdown_timeout`` seconds."""
    import asyncio

    import uvloop

    host, _, port = config.listen.rpartition(":")
    app = create_app(config)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        app, host=host.strip("[]"), port=int(port), access_log_class=AccessLogger,
        shutdown_timeout=shutdown_timeout, print=(lambda msg: logging.getLogger("vault").info("listening on http://%s", config.listen)) if print_ready else None,
        handle_signals=True,
    )
