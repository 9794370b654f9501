"""Typed keys for the aiohttp application and request (declared once, used everywhere)."""

from __future__ import annotations

from aiohttp import web

from vault.auth import Principal
from vault.config import Config
from vault.service import Vault

CONFIG = web.AppKey("config", Config)
VAULT = web.AppKey("vault", Vault)

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
