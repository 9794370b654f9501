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


# One tag per area, so that generated clients group operations the way docs/api.md does. The
# first tag with a prefix the path starts with is its tag; a path matching none fails the build
# (tests/api/test_openapi.py), so a new area cannot slip in untagged.
TAGS = (
    ("images", "Store, read, update and shred images and their metadata", ("/v1/images",)),
    ("uploads", "Resumable uploads (tus 1.0.0)", ("/v1/uploads",)),
    ("search", "Search a tenant's records", ("/v1/search",)),
    ("patients", "A patient's records at once: erasure, legal hold, export, access report", ("/v1/patients",)),
    ("audit", "The audit trail (role auditor or admin)", ("/v1/audit",)),
    ("retention", "Retention sweep", ("/v1/admin/retention",)),
    ("admin", "Statistics and key management", ("/v1/admin",)),
    ("console", "The web console's session: sign in with a token, read, sign out", ("/v1/session",)),
    ("system", "Health, readiness, metrics, this document, build information",
     ("/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/info")),
)


def _tag(path: str) -> str:
    for name, _, prefixes in TAGS:
        if any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes):
            return name
    raise ValueError(f"no OpenAPI tag for {path}: add its area to TAGS")


def _tagged(paths: dict[str, Any]) -> dict[str, Any]:
    for path, item in paths.items():
        for method, operation in item.items():
            if method != "parameters":
                operation["tags"] = [_tag(path)]
    return paths


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
        "tags": [{"name": name, "description": description} for name, description, _ in TAGS],
        "paths": _tagged(path_items(config)),
    }
