"""Path items of the OpenAPI document, one function per area of the API (as vault/api/handlers)."""

from __future__ import annotations

from typing import Any

from vault.api.openapi.schemas import ref
from vault.audit.query import MAX_ACTOR
from vault.audit.store import MAX_PAGE
from vault.config import Config
from vault.metadata import TEXT_PATTERN

BEARER = [{"bearer": []}]

_ID_PARAM = {
    "name": "id", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$"},
}
_ERRORS = {
    400: "Invalid request", 401: "Missing or invalid token", 403: "Role not allowed",
    404: "Not found (or another tenant's)", 409: "Conflict", 413: "Too large",
    415: "Unsupported media type, or content not of the declared type", 416: "Range not satisfiable",
    422: "Digest mismatch, or an Idempotency-Key used for another request",
    500: "Integrity error", 503: "Temporarily unavailable", 507: "Insufficient storage",
}
RENDITION_HEADERS = {
    "ETag": {"description": "Strong validator of the rendition's bytes", "schema": {"type": "string"}},
    "Cache-Control": {"description": "private, no-store", "schema": {"type": "string"}},
}


def _rendition_item(kind: str, long_edge: int) -> dict[str, Any]:
    """``GET``/``HEAD /v1/images/{id}/<kind>`` (docs/api.md)."""
    webp = {"image/webp": {"schema": {"type": "string", "format": "binary"}}}
    pending = {"description": "Its job is queued (rendition_pending; Retry-After)",
               "headers": {"Retry-After": {"schema": {"type": "integer"}}},
               "content": {"application/json": {"schema": ref("Error")}}}
    unavailable = {"description": "No rendition for this image (rendition_unavailable)",
                   "content": {"application/json": {"schema": ref("Error")}}}
    name = kind.capitalize()
    return {
        "parameters": [_ID_PARAM],
        "get": {
            "operationId": f"get{name}",
            "summary": f"The image's {kind}: WebP, long edge at most {long_edge} px, oriented, sRGB, no metadata",
            "security": BEARER,
            "parameters": [{"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": f"The {kind}", "headers": RENDITION_HEADERS, "content": webp},
                "304": {"description": "Not modified", "headers": {"ETag": RENDITION_HEADERS["ETag"]}},
                "409": pending, "422": unavailable,
                **_errors(401, 403, 404, 500, 503),
            },
        },
        "head": {
            "operationId": f"head{name}",
            "summary": f"The {kind}'s headers without its bytes; audited as a read",
            "security": BEARER,
            "responses": {
                "200": {"description": f"The {kind}'s headers", "headers": RENDITION_HEADERS},
                "304": {"description": "Not modified", "headers": {"ETag": RENDITION_HEADERS["ETag"]}},
                "409": pending, "422": unavailable,
                **_errors(401, 403, 404, 500, 503),
            },
        },
    }


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


# What a download carries besides its bytes (docs/api.md, "GET /v1/images/{id}").
IMAGE_HEADERS = {
    "ETag": _header("Strong validator of the stored bytes (for If-None-Match)"),
    "Repr-Digest": _header("sha-256 of the whole image, RFC 9530 (sha-256=:base64:)"),
    "Content-Digest": _header("sha-256 of this response's content, RFC 9530"),
    "Accept-Ranges": _header("bytes"),
    "Cache-Control": _header("private, no-store"),
    "Content-Disposition": _header("attachment, with the record's display name (no personal data)"),
}


# docs/api.md, "Idempotent requests".
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "An RFC 8941 sf-string (quoted), 1-255 printable ASCII characters: a retry with the same key "
                   "gets the first outcome (Idempotent-Replayed: true) instead of doing the work again",
    # The pattern bounds the length (1-255 characters inside the quotes); a maxLength beside it
    # would have a schema-based fuzzer send strings of that length that the pattern refuses.
    "schema": {"type": "string", "pattern": '^"([ !#-\\[\\]-~]|\\\\["\\\\]){1,255}"$',
               "example": '"8e03978e-40d5-43e8-bc93-6894a57f9324"'},
}
_REPLAYED = {"Idempotent-Replayed": {"description": "present (true) when the answer replays an earlier request's outcome",
                                     "schema": {"type": "string", "enum": ["true"]}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _error(_ERRORS[code]) for code in codes}


def _json_operation(operation_id: str, summary: str, request: str, response: str, *codes: int) -> dict[str, Any]:
    """A POST taking and returning JSON, as the patient operations do."""
    return {
        "operationId": operation_id,
        "summary": summary,
        "security": BEARER,
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref(request)}}},
        "responses": {
            "200": {"description": "Done", "content": {"application/json": {"schema": ref(response)}}},
            **_errors(*codes),
        },
    }


def _images(config: Config) -> dict[str, Any]:
    image_types = {t: {"schema": {"type": "string", "format": "binary"}} for t in config.allowed_content_types}
    return {
        "/v1/images": {
            "post": {
                "operationId": "uploadImage",
                "summary": "Store an image (multipart: part 'metadata' JSON first, then part 'file')",
                "security": BEARER,
                "parameters": [_IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["metadata", "file"],
                                "properties": {
                                    "metadata": ref("Metadata"),
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
                        "headers": {"Location": {"schema": {"type": "string"}}, **_REPLAYED},
                        "content": {"application/json": {"schema": ref("Record")}},
                    },
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503, 507),
                },
            }
        },
        "/v1/images/{id}": {
            "parameters": [_ID_PARAM],
            "get": {
                "operationId": "getImage",
                "summary": "The decrypted image (Range, If-None-Match supported)",
                "security": BEARER,
                "parameters": [
                    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "The image", "headers": IMAGE_HEADERS, "content": image_types},
                    "206": {"description": "A byte range of the image",
                            "headers": {**IMAGE_HEADERS, "Content-Range": _header("bytes START-END/SIZE")},
                            "content": image_types},
                    "304": {"description": "Not modified", "headers": {"ETag": IMAGE_HEADERS["ETag"]}},
                    **_errors(401, 403, 404, 416, 500, 503),
                },
            },
            "head": {
                "operationId": "headImage",
                "summary": "The image's headers (size, type, ETag, digest) without its bytes; audited as a read",
                "security": BEARER,
                "responses": {
                    "200": {"description": "The image's headers", "headers": IMAGE_HEADERS},
                    "304": {"description": "Not modified", "headers": {"ETag": IMAGE_HEADERS["ETag"]}},
                    **_errors(401, 403, 404, 500, 503),
                },
            },
            "delete": {
                "operationId": "shredImage",
                "summary": "Crypto-shred one record",
                "security": BEARER,
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
        "/v1/images/{id}/thumbnail": _rendition_item("thumbnail", 256),
        "/v1/images/{id}/preview": _rendition_item("preview", 1280),
        "/v1/images/{id}/metadata": {
            "parameters": [_ID_PARAM],
            "get": {
                "operationId": "getMetadata",
                "security": BEARER,
                "responses": {
                    "200": {"description": "The record", "content": {"application/json": {"schema": ref("Record")}}},
                    **_errors(401, 403, 404, 503),
                },
            },
            "patch": {
                "operationId": "patchMetadata",
                "summary": "JSON merge patch of mutable fields",
                "security": BEARER,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/merge-patch+json": {"schema": ref("MetadataPatch")},
                        "application/json": {"schema": ref("MetadataPatch")},
                    },
                },
                "responses": {
                    "200": {"description": "The updated record", "content": {"application/json": {"schema": ref("Record")}}},
                    **_errors(400, 401, 403, 404, 409, 413, 415, 503),
                },
            },
        },
    }


_TUS_RESUMABLE = {
    "name": "Tus-Resumable", "in": "header", "required": True, "schema": {"type": "string", "const": "1.0.0"},
}
_UPLOAD_ID_PARAM = {
    "name": "id", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": "^[0-7][0-9A-HJKMNP-TV-Z]{25}$"},
}


def _tus_header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


def _uploads(config: Config) -> dict[str, Any]:
    """Resumable uploads, the tus 1.0.0 protocol (docs/api.md, "Resumable uploads")."""
    progress = {
        "Upload-Offset": _tus_header("Bytes received and kept", {"type": "integer", "minimum": 0}),
        "Upload-Expires": _tus_header("When the upload expires (RFC 9110 date)"),
        "Tus-Resumable": _tus_header("1.0.0"),
    }
    completed = _tus_header("/v1/images/{id} of the record, once the upload is complete")
    tus_errors = {"412": _error("Tus-Resumable is not 1.0.0")}
    return {
        "/v1/uploads": {
            "options": {
                "operationId": "tusOptions",
                "summary": "Discover the tus version, extensions, maximum size and checksum algorithms",
                "security": BEARER,
                "responses": {"204": {"description": "Supported", "headers": {
                    "Tus-Version": _tus_header("1.0.0"), "Tus-Extension": _tus_header("Supported extensions"),
                    "Tus-Max-Size": _tus_header("Largest Upload-Length", {"type": "integer"}),
                    "Tus-Checksum-Algorithm": _tus_header("sha256,sha1"),
                }}, **_errors(401)},
            },
            "post": {
                "operationId": "tusCreateUpload",
                "summary": "Create a resumable upload (metadata validated now); a body is its first chunk",
                "security": BEARER,
                "parameters": [
                    _TUS_RESUMABLE,
                    {"name": "Upload-Length", "in": "header", "required": True,
                     "schema": {"type": "integer", "minimum": 0, "maximum": config.max_image_bytes}},
                    {"name": "Upload-Metadata", "in": "header", "required": True,
                     "description": "'metadata <base64 of the metadata JSON>,content_type <base64 of the media type>'",
                     "schema": {"type": "string"}},
                ],
                "requestBody": {"required": False, "content": {
                    "application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {
                    "201": {"description": "Created", "headers": {
                        "Location": _tus_header("/v1/uploads/{id}"), "Content-Location": completed, **progress}},
                    **_errors(400, 401, 403, 413, 415, 503), **tus_errors,
                },
            },
        },
        "/v1/uploads/{id}": {
            "parameters": [_UPLOAD_ID_PARAM, _TUS_RESUMABLE],
            "head": {
                "operationId": "tusUploadOffset",
                "summary": "The upload's offset (and, once complete, its record)",
                "security": BEARER,
                "responses": {
                    "200": {"description": "The upload's state", "headers": {
                        "Upload-Length": _tus_header("Upload-Length", {"type": "integer"}),
                        "Upload-Metadata": _tus_header("As sent at creation, while the upload is open"),
                        "Content-Location": completed, **progress}},
                    "404": {"description": "No such upload, another principal's, or expired (no body)"},
                    **_errors(401, 403), "412": {"description": "Tus-Resumable is not 1.0.0 (no body)"},
                },
            },
            "patch": {
                "operationId": "tusAppendChunk",
                "summary": "Append a chunk at Upload-Offset; the chunk that reaches Upload-Length completes the upload",
                "security": BEARER,
                "parameters": [
                    {"name": "Upload-Offset", "in": "header", "required": True, "schema": {"type": "integer", "minimum": 0}},
                    {"name": "Upload-Checksum", "in": "header", "required": False,
                     "description": "'sha256 <base64 digest>' (or sha1) of this chunk", "schema": {"type": "string"}},
                ],
                "requestBody": {"required": True, "content": {
                    "application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {
                    "204": {"description": "Kept; complete when Content-Location is present",
                            "headers": {"Content-Location": completed, **progress}},
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 500, 503, 507), **tus_errors,
                    "460": _error("The chunk does not match its Upload-Checksum; it was discarded"),
                },
            },
            "delete": {
                "operationId": "tusTerminateUpload",
                "summary": "Terminate the upload and delete its staged data",
                "security": BEARER,
                "responses": {"204": {"description": "Terminated"}, **_errors(401, 403, 404), **tus_errors},
            },
        },
    }


def _search() -> dict[str, Any]:
    return {
        "/v1/search": {
            "post": {
                "operationId": "search",
                "summary": "Records of the caller's tenant by patient and facets, paged by cursor",
                "description": "One call walks at most `search_scan_budget` index entries; a page may then hold "
                               "fewer than `limit` items, or none, and still carry a `next_cursor`.",
                "security": BEARER,
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("SearchRequest")}}},
                "responses": {
                    "200": {"description": "A page of records", "content": {"application/json": {"schema": ref("SearchPage")}}},
                    **_errors(400, 401, 403, 413, 415, 503),
                },
            }
        },
    }


def _admin() -> dict[str, Any]:
    return {
        "/v1/admin/stats": {
            "get": {
                "operationId": "adminStats",
                "summary": "Records and bytes: the caller's tenant (role operator) or every tenant (role admin)",
                "security": BEARER,
                "responses": {
                    "200": {"description": "Counts", "content": {"application/json": {"schema": {"type": "object"}}}},
                    **_errors(401, 403),
                },
            }
        },
        "/v1/admin/keys": {
            "get": {
                "operationId": "keyStatus",
                "summary": "KEK versions, data keys per version, rewrap job state (role admin)",
                "security": BEARER,
                "responses": {
                    "200": {"description": "Key status", "content": {"application/json": {"schema": ref("KeyReport")}}},
                    **_errors(401, 403, 503),
                },
            }
        },
        "/v1/admin/keys/rotate": {
            "post": {
                "operationId": "rotateKeys",
                "summary": "New KEK version; starts the background rewrap (role admin)",
                "security": BEARER,
                "responses": {
                    "202": {"description": "Rotated; rewrap running", "content": {"application/json": {"schema": {"type": "object"}}}},
                    **_errors(401, 403, 503),
                },
            }
        },
        "/v1/admin/keys/epoch": {
            "post": {
                "operationId": "startShredEpoch",
                "summary": "Start the shred epoch: rotate the KEK and every blind-index key, rewrap, re-key patient HMACs, retire (role admin)",
                "security": BEARER,
                "responses": {
                    "202": {"description": "Started (or already running); progress in GET /v1/admin/keys",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    **_errors(401, 403, 409, 503),
                },
            }
        },
        "/v1/admin/keys/retire": {
            "post": {
                "operationId": "retireKeys",
                "summary": "Make KEK versions below the current one unusable (role admin)",
                "security": BEARER,
                "responses": {
                    "200": {"description": "Retired", "content": {"application/json": {"schema": ref("KeyReport")}}},
                    **_errors(401, 403, 409, 503),
                },
            }
        },
    }


def _system() -> dict[str, Any]:
    """The unauthenticated endpoints."""
    return {
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


def _patients() -> dict[str, Any]:
    export = _json_operation(
        "exportPatient", "Subject access export: every image of the patient plus manifest.json, as a streamed zip (role dpo)",
        "ExportRequest", "ExportRequest", 400, 401, 403, 413, 415, 500, 503,
    )
    export["responses"]["200"] = {
        "description": "A zip archive, streamed. A blob failing its integrity check after streaming began aborts the connection (truncated transfer).",
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    }
    report = _json_operation(
        "patientAccessReport",
        "Every audited access to a patient's records in the caller's tenant, streamed (role dpo)",
        "AccessReportRequest", "AccessReport", 400, 401, 403, 413, 415, 503,
    )
    report["responses"]["200"]["description"] = (
        "One JSON object, streamed (chunked); a failure after streaming began aborts the connection")
    erase = _json_operation(
        "erasePatient", "Crypto-shred every record of a patient (role dpo); refusals are listed",
        "ErasureRequest", "ErasureReport", 400, 401, 403, 409, 413, 415, 422, 503,
    )
    erase["parameters"] = [_IDEMPOTENCY_KEY]
    erase["responses"]["200"]["headers"] = _REPLAYED
    return {
        "/v1/patients/erase": {"post": erase},
        "/v1/patients/legal-hold": {"post": _json_operation(
            "setPatientLegalHold", "Place or lift a legal hold on every record of a patient (role dpo)",
            "HoldRequest", "HoldReport", 400, 401, 403, 413, 415, 503,
        )},
        "/v1/patients/export": {"post": export},
        "/v1/patients/access-report": {"post": report},
    }


def _retention() -> dict[str, Any]:
    return {
        "/v1/admin/retention/sweep": {"post": {
            "operationId": "retentionSweep",
            "summary": "Shred every record whose retention has ended and that is not on legal hold: "
                       "the caller's tenant (role operator) or every tenant (role admin)",
            "security": BEARER,
            "parameters": [{"name": "dry_run", "in": "query", "required": False, "schema": {"type": "boolean", "default": False}}],
            "responses": {
                "200": {"description": "Counts", "content": {"application/json": {"schema": ref("SweepReport")}}},
                **_errors(400, 401, 403, 503),
            },
        }},
    }


def _audit() -> dict[str, Any]:
    return {
        "/v1/audit": {"get": {
            "operationId": "listAudit",
            "summary": "Audit entries after a sequence number, filtered: the caller's tenant (role auditor) "
                       "or every scope (role admin)",
            "security": BEARER,
            "parameters": [
                {"name": "after", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100}},
                {"name": "record_id", "in": "query", "required": False, "description": "entries naming this record",
                 "schema": {"type": "string", "pattern": "^[0-7][0-9A-HJKMNP-TV-Z]{25}$"}},  # 128 bits
                {"name": "actor", "in": "query", "required": False, "description": "entries of this actor name",
                 "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ACTOR, "pattern": TEXT_PATTERN}},
                {"name": "since", "in": "query", "required": False, "description": "entries at or after this time",
                 "schema": {"type": "string", "format": "date-time"}},
                {"name": "until", "in": "query", "required": False, "description": "entries before this time",
                 "schema": {"type": "string", "format": "date-time"}},
            ],
            "responses": {
                "200": {"description": "A page of entries", "content": {"application/json": {"schema": ref("AuditPage")}}},
                **_errors(400, 401, 403, 503),
            },
        }},
        "/v1/audit/verify": {"get": {
            "operationId": "verifyAudit",
            "summary": "Verify the whole hash chain; ok with the head hash, or the first bad seq; "
                       "names no entry (role auditor or admin)",
            "security": BEARER,
            "responses": {
                "200": {"description": "Verification result", "content": {"application/json": {"schema": ref("AuditVerification")}}},
                **_errors(401, 403, 503),
            },
        }},
    }


# Any authenticated request may name the user an application acts for (vault/auth.py): a name
# outside this pattern is a 400, a token without the right a 403, on every operation.
ON_BEHALF_PARAM = {
    "name": "X-On-Behalf-Of", "in": "header", "required": False,
    "description": "The user an application token (created with --on-behalf) acts for; recorded in the audit trail",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.@|:+\\-]{0,127}$"},
}


def _with_on_behalf(items: dict[str, Any]) -> dict[str, Any]:
    for item in items.values():
        for method, operation in item.items():
            if method == "parameters" or operation.get("security") != BEARER:
                continue
            operation["parameters"] = [*operation.get("parameters", []), ON_BEHALF_PARAM]
            for code in (400, 403):
                operation["responses"].setdefault(str(code), _error(_ERRORS[code]))
    return items


def _session() -> dict[str, Any]:
    """The web console's session (docs/api.md, "Web console"): a token in, a cookie out."""
    session = {"description": "The session", "content": {"application/json": {"schema": ref("Session")}}}
    return {"/v1/session": {
        "post": {
            "operationId": "startSession",
            "summary": "Sign in to the console: the token in the body becomes an HttpOnly session cookie",
            "security": [],
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref("SessionStart")}}},
            "responses": {
                "201": {**session, "headers": {"Set-Cookie": _header("imagevault_session=...; HttpOnly; SameSite=Strict; Path=/")}},
                "403": _error("Sent from another origin (csrf_rejected)"), **_errors(400, 401, 413, 415, 503),
            },
        },
        "get": {
            "operationId": "readSession",
            "summary": "This browser's console session, or signed_in false (never 401)",
            "security": [],
            "responses": {"200": session, "403": _error("A cross-site request with the cookie (csrf_rejected)")},
        },
        "delete": {
            "operationId": "endSession",
            "summary": "Sign out of the console (needs the cookie and X-CSRF-Token)",
            "security": [],
            "responses": {"204": {"description": "Signed out"}, **_errors(401, 403, 404)},
        },
    }, "/v1/session/oidc": {"get": {
        "operationId": "startSessionAtProvider",
        "summary": "Sign in at the identity provider: 302 there (authorization code with PKCE)",
        "security": [],
        "responses": {"302": {"description": "To the provider's authorization endpoint"}, **_errors(404, 503)},
    }}, "/v1/session/oidc/callback": {"get": {
        "operationId": "finishSessionAtProvider",
        "summary": "Back from the identity provider: a session and 302 to the console, or 302 to the sign-in page",
        "security": [],
        "parameters": [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                       for name in ("code", "state", "error")],
        "responses": {"302": {"description": "To /console/ (signed in) or /console/?signin=failed"}, **_errors(404, 503)},
    }}}


def path_items(config: Config) -> dict[str, Any]:
    return _with_on_behalf(
        {**_images(config), **_uploads(config), **_search(), **_admin(), **_system(), **_patients(), **_retention(),
         **_audit(), **_session()}
    )
