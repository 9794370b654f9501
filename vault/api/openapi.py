"""The OpenAPI 3.1 description served at ``/openapi.json``; it must match the behaviour.

Built from the same constants the validators use (modalities, consent purposes, limits), so
the document cannot drift from the checks.
"""

from __future__ import annotations

from typing import Any

from vault import __version__
from vault.config import Config
from vault.metadata import CONSENT_PURPOSES, MODALITIES, TEXT_PATTERN
from vault.search import MAX_LIMIT


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid request", 401: "Missing or invalid token", 403: "Role not allowed",
        404: "Not found (or another tenant's)", 409: "Conflict", 413: "Too large",
        415: "Unsupported media type", 416: "Range not satisfiable", 422: "Digest mismatch",
        500: "Integrity error", 503: "Temporarily unavailable", 507: "Insufficient storage",
    }
    return {str(code): _error(text[code]) for code in codes}


_ID_PARAM = {
    "name": "id", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$"},
}



def _text(max_length: int, *, nullable: bool = True) -> dict[str, Any]:
    return {
        "type": ["string", "null"] if nullable else "string",
        "minLength": 1, "maxLength": max_length, "pattern": TEXT_PATTERN,
    }


def _schemas(config: Config) -> dict[str, Any]:
    timestamp = {"type": "string", "format": "date-time"}
    nullable_text = _text(128)
    search_text = {"type": ["string", "null"], "minLength": 1, "maxLength": 128}
    consent = {
        "type": ["object", "null"],  # null: the defaults (care only)
        "additionalProperties": False,
        "properties": {
            **{p: {"type": ["boolean", "null"]} for p in CONSENT_PURPOSES},
            "method": _text(32),
            "recorded_at": {"type": ["string", "null"], "format": "date-time"},
        },
    }
    date = {"type": "string", "format": "date"}
    # Discriminated by "class" (required): exactly what vault.metadata accepts.
    retention = {
        "oneOf": [
            {"type": "null"},  # null: the default, medical
            {"type": "object", "additionalProperties": False, "required": ["class"],
             "properties": {"class": {"enum": ["medical", "aesthetic"]}, "until": {"type": "null"}}},
            {"type": "object", "additionalProperties": False, "required": ["class", "until"],
             "properties": {"class": {"const": "until"}, "until": date}},
        ],
    }
    metadata_props: dict[str, Any] = {
        "patient_id": _text(128, nullable=False),
        "captured_at": timestamp,
        "modality": {"enum": list(MODALITIES)},
        "body_site": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
        "body_site_code": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9.\\-]{1,32}$"},
        "lesion_id": nullable_text,
        "session_id": nullable_text,
        "device": nullable_text,
        "description": _text(4096),
        "diagnosis": _text(1024),
        "tags": {"type": ["array", "null"], "maxItems": 32, "items": _text(64, nullable=False)},
        "consent": consent,
        "retention": retention,
        "legal_hold": {"type": ["boolean", "null"]},
        "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-fA-F]{64}$"},
    }
    record_props = dict(metadata_props)
    record_props.update(
        id={"type": "string"},
        tenant={"type": "string"},
        content_type={"type": "string"},
        size={"type": "integer", "minimum": 0},
        sha256={"type": "string", "pattern": "^[0-9a-f]{64}$"},
        received_sha256={"type": "string", "pattern": "^[0-9a-f]{64}$"},
        created_at=timestamp,
        updated_at=timestamp,
        retain_until={"type": ["string", "null"], "format": "date-time"},
        key_version={"type": "integer"},
        display_name={"type": "string"},
        consent={"type": "object"},
        retention={"type": "object"},
        legal_hold={"type": "boolean"},
        tags={"type": "array", "items": {"type": "string"}},
    )
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "request_id"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "request_id": {"type": "string"},
                        "field": {"type": "string"},
                    },
                }
            },
        },
        "Metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["patient_id", "captured_at", "modality", "body_site"],
            "properties": metadata_props,
        },
        "MetadataPatch": {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: v for k, v in metadata_props.items() if k != "sha256"},
        },
        "Record": {
            "type": "object",
            "required": ["id", "tenant", "content_type", "size", "sha256", "created_at", "display_name"],
            "properties": record_props,
        },
        "SearchRequest": {
            "type": "object",
            "additionalProperties": False,
            # Every filter may be null (= not given); all given filters must match.
            "properties": {
                "patient_id": search_text,
                "lesion_id": search_text,
                "session_id": search_text,
                "modality": {"enum": [*MODALITIES, None]},
                "body_site": search_text,
                "tag": search_text,
                "consent": {"enum": [*CONSENT_PURPOSES, None]},
                "captured_from": {"type": ["string", "null"], "format": "date-time"},
                "captured_to": {"type": ["string", "null"], "format": "date-time"},
                "limit": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_LIMIT},
                "cursor": {"type": ["string", "null"], "pattern": "^([A-Za-z0-9_-]{32})?$"},
            },
        },
        "KeyReport": {
            "type": "object",
            "required": ["provider", "key_name", "current_version", "versions", "dek_counts", "rewrap"],
            "properties": {
                "provider": {"type": "string"},
                "key_name": {"type": "string"},
                "current_version": {"type": "integer"},
                "min_decryption_version": {"type": "integer"},
                "versions": {"type": "array", "items": {"type": "integer"}},
                "dek_counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                "tenant_key_counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                "rewrap": {"type": "object"},
            },
        },
        "SearchPage": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": _ref("Record")},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
    }


def build_openapi(config: Config) -> dict[str, Any]:
    bearer = [{"bearer": []}]
    image_types = {t: {"schema": {"type": "string", "format": "binary"}} for t in config.allowed_content_types}
    paths: dict[str, Any] = {
        "/v1/images": {
            "post": {
                "operationId": "uploadImage",
                "summary": "Store an image (multipart: part 'metadata' JSON first, then part 'file')",
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["metadata", "file"],
                                "properties": {
                                    "metadata": _ref("Metadata"),
                                    "file": {"type": "string", "format": "binary"},
                                },
                            },
                            "encoding": {
                                "metadata": {"contentType": "application/json"},
                                "file": {"contentType": ", ".join(config.allowed_content_types)},
                            },
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "Stored",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {"application/json": {"schema": _ref("Record")}},
                    },
                    **_errors(400, 401, 403, 413, 415, 422, 503, 507),
                },
            }
        },
        "/v1/images/{id}": {
            "parameters": [_ID_PARAM],
            "get": {
                "operationId": "getImage",
                "summary": "The decrypted image (Range, If-None-Match supported)",
                "security": bearer,
                "parameters": [
                    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "The image", "content": image_types},
                    "206": {"description": "A byte range of the image", "content": image_types},
                    "304": {"description": "Not modified"},
                    **_errors(401, 403, 404, 416, 500, 503),
                },
            },
            "delete": {
                "operationId": "shredImage",
                "summary": "Crypto-shred one record",
                "security": bearer,
                "parameters": [
                    {"name": "reason", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 1024}},
                    {"name": "override", "in": "query", "required": False, "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": {
                        "description": "Shredded",
                        "content": {"application/json": {"schema": {
                            "type": "object", "required": ["id", "shredded"],
                            "properties": {"id": {"type": "string"}, "shredded": {"type": "boolean"}},
                        }}},
                    },
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            },
        },
        "/v1/images/{id}/metadata": {
            "parameters": [_ID_PARAM],
            "get": {
                "operationId": "getMetadata",
                "security": bearer,
                "responses": {
                    "200": {"description": "The record", "content": {"application/json": {"schema": _ref("Record")}}},
                    **_errors(401, 403, 404, 503),
                },
            },
            "patch": {
                "operationId": "patchMetadata",
                "summary": "JSON merge patch of mutable fields",
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/merge-patch+json": {"schema": _ref("MetadataPatch")},
                        "application/json": {"schema": _ref("MetadataPatch")},
                    },
                },
                "responses": {
                    "200": {"description": "The updated record", "content": {"application/json": {"schema": _ref("Record")}}},
                    **_errors(400, 401, 403, 404, 409, 413, 415, 503),
                },
            },
        },
        "/v1/search": {
            "post": {
                "operationId": "search",
                "security": bearer,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SearchRequest")}}},
                "responses": {
                    "200": {"description": "A page of records", "content": {"application/json": {"schema": _ref("SearchPage")}}},
                    **_errors(400, 401, 403, 413, 415, 503),
                },
            }
        },
        "/v1/admin/stats": {
            "get": {
                "operationId": "adminStats",
                "security": bearer,
                "responses": {
                    "200": {"description": "Counts", "content": {"application/json": {"schema": {"type": "object"}}}},
                    **_errors(401, 403),
                },
            }
        },
        "/v1/admin/keys": {
            "get": {
                "operationId": "keyStatus",
                "summary": "KEK versions, data keys per version, rewrap job state",
                "security": bearer,
                "responses": {
                    "200": {"description": "Key status", "content": {"application/json": {"schema": _ref("KeyReport")}}},
                    **_errors(401, 403, 503),
                },
            }
        },
        "/v1/admin/keys/rotate": {
            "post": {
                "operationId": "rotateKeys",
                "summary": "New KEK version; starts the background rewrap",
                "security": bearer,
                "responses": {
                    "202": {"description": "Rotated; rewrap running", "content": {"application/json": {"schema": {"type": "object"}}}},
                    **_errors(401, 403, 503),
                },
            }
        },
        "/v1/admin/keys/retire": {
            "post": {
                "operationId": "retireKeys",
                "summary": "Make KEK versions below the current one unusable (the shred epoch)",
                "security": bearer,
                "responses": {
                    "200": {"description": "Retired", "content": {"application/json": {"schema": _ref("KeyReport")}}},
                    **_errors(401, 403, 409, 503),
                },
            }
        },
        "/healthz": {"get": {"operationId": "healthz", "security": [], "responses": {"200": {"description": "Alive"}}}},
        "/readyz": {
            "get": {
                "operationId": "readyz", "security": [],
                "responses": {"200": {"description": "Ready"}, "503": _error("Not ready (names the failing part)")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics", "security": [],
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }
        },
        "/openapi.json": {
            "get": {"operationId": "openapi", "security": [], "responses": {"200": {"description": "This document"}}}
        },
        "/v1/info": {
            "get": {
                "operationId": "info", "security": [],
                "responses": {"200": {"description": "Version, KMS provider, storage backend", "content": {"application/json": {"schema": {"type": "object"}}}}},
            }
        },
    }
    from vault.api.openapi_privacy import privacy_paths, privacy_schemas  # imports this module

    paths.update(privacy_paths())
    schemas = _schemas(config)
    schemas.update(privacy_schemas())
    return {
        "openapi": "3.1.0",
        "info": {"title": "imagevault", "version": __version__, "description": "Encrypted image vault for clinical photographs (API v1)."},
        "servers": [{"url": "/"}],
        "security": bearer,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "paths": paths,
    }
