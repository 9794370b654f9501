"""Typed keys for the aiohttp application and request (declared once, used everywhere)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from vault.api.sessions import Session, SessionStore
from vault.auth import Principal
from vault.config import Config
from vault.identity.authorize import AuthorizationCodeFlow
from vault.service import Vault


class InFlight:
    """Requests being handled now: SIGTERM waits for this to reach zero before closing."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.count += 1
        self.idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()


CONFIG = web.AppKey("config", Config)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
VAULT = web.AppKey("vault", Vault)
SESSIONS = web.AppKey("sessions", SessionStore)
# Present only with console_oidc_client_id: the console's sign-in at the identity provider.
CONSOLE_OIDC = web.AppKey("console_oidc", AuthorizationCodeFlow)

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
SESSION = web.RequestKey("session", Session)  # set when the console's cookie authenticated the request
