"""The OpenAPI 3.1 description served at ``/openapi.json``; it must match the behaviour.

Built from the same constants the validators use (modalities, consent purposes, limits), so
the document cannot drift from the checks. ``schemas`` holds the component schemas, ``paths``
the path items, one function per area of the API.
"""

from __future__ import annotations

from typing import Any

from vault import __version__
from vault.api.openapi.paths import BEARER, path_items
from vault.api.openapi.schemas import component_schemas
from vault.config import Config

__all__ = ["build_openapi"]


def build_openapi(config: Config) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "imagevault", "version": __version__, "description": "Encrypted image vault for clinical photographs (API v1)."},
        "servers": [{"url": "/"}],
        "security": BEARER,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": component_schemas(),
        },
        "paths": path_items(config),
    }
