"""Component schemas of the OpenAPI document (``#/components/schemas``).

Each mirrors the validator of its request or the shape of its response: metadata
(vault.metadata), search (vault.search), patient operations (vault.patients), audit
(vault.audit).
"""

from __future__ import annotations

from typing import Any

from vault.audit.chain import AuditAction
from vault.auth import MAX_JWT_LENGTH
from vault.errors import error_codes
from vault.metadata import CONSENT_PURPOSES, MODALITIES, TEXT_PATTERN
from vault.patients import MAX_REASON
from vault.search import MAX_LIMIT

_TIMESTAMP = {"type": "string", "format": "date-time"}
_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
# As vault/patients.py checks them: not blank, no control characters in a patient id.
_PATIENT_ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": TEXT_PATTERN}
_MERGED = ("only for a patient_id under the tenant's legacy scheme: whether matched records store "
           "a differently written patient id (possibly another patient)")
_REASON = {"type": "string", "minLength": 1, "maxLength": MAX_REASON, "pattern": TEXT_PATTERN}


def ref(name: str) -> dict[str, str]:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def _text(max_length: int, *, nullable: bool = True) -> dict[str, Any]:
    return {
        "type": ["string", "null"] if nullable else "string",
        "minLength": 1, "maxLength": max_length, "pattern": TEXT_PATTERN,
    }


def _metadata_properties() -> dict[str, Any]:
    nullable_text = _text(128)
    consent = {
        "type": ["object", "null"],  # null: the defaults (care only)
        "additionalProperties": False,
        "properties": {
            **{p: {"type": ["boolean", "null"]} for p in CONSENT_PURPOSES},
            "method": _text(32),
            "recorded_at": {"type": ["string", "null"], "format": "date-time"},
        },
    }
    # Discriminated by "class" (required): exactly what vault.metadata accepts.
    retention = {
        "oneOf": [
            {"type": "null"},  # null: the default, medical
            {"type": "object", "additionalProperties": False, "required": ["class"],
             "properties": {"class": {"enum": ["medical", "aesthetic"]}, "until": {"type": "null"}}},
            {"type": "object", "additionalProperties": False, "required": ["class", "until"],
             "properties": {"class": {"const": "until"}, "until": {"type": "string", "format": "date"}}},
        ],
    }
    return {
        "patient_id": _text(128, nullable=False),
        "captured_at": _TIMESTAMP,
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


def _record_properties(metadata: dict[str, Any]) -> dict[str, Any]:
    """A stored record: the metadata as normalised (defaults filled in) plus the server's fields."""
    return {
        **metadata,
        "id": {"type": "string"},
        "tenant": {"type": "string"},
        "content_type": {"type": "string"},
        "size": {"type": "integer", "minimum": 0},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "received_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "created_at": _TIMESTAMP,
        "updated_at": _TIMESTAMP,
        "retain_until": {"type": ["string", "null"], "format": "date-time"},
        "key_version": {"type": "integer"},
        "renditions": {
            "type": "object", "required": ["state"],
            "description": "where the thumbnail and preview stand; absent for records stored before renditions existed",
            "properties": {
                "state": {"type": "string", "enum": ["queued", "ready", "failed", "unavailable"]},
                "reason": {"type": "string", "description": "why failed or unavailable: a reason code"},
            },
        },
        "display_name": {"type": "string"},
        "consent": {"type": "object"},
        "retention": {"type": "object"},
        "legal_hold": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
    }


def _search_request() -> dict[str, Any]:
    search_text = {"type": ["string", "null"], "minLength": 1, "maxLength": 128}
    return {
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
    }


def _audit_entry() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["seq", "time", "tenant", "actor", "action", "record_ids", "outcome", "details", "prev_hash", "hash"],
        "properties": {
            "seq": {"type": "integer", "minimum": 1},
            "time": {"type": "string", "format": "date-time"},
            "tenant": {"type": "string", "description": "the tenant the entry is about, or '-' (global: admins only)"},
            "actor": {
                "type": "object", "required": ["name", "role", "tenant", "via", "on_behalf_of"],
                "properties": {
                    "name": {"type": "string", "description": "the token's name, or the JWT's subject"},
                    "role": {"type": "string"}, "tenant": {"type": "string"},
                    "via": {"type": "string", "description": "'token' (opaque token, command line, daemon) or 'oidc' (JWT)"},
                    "on_behalf_of": {"type": ["string", "null"], "description": "the user an application token acted for"},
                },
            },
            "action": {"type": "string", "examples": [a.value for a in AuditAction]},
            "record_ids": {"type": "array", "items": {"type": "string"}},
            "outcome": {"type": "string", "description": "'ok' or the API error code"},
            "details": {"type": "object"},
            "prev_hash": _HEX64,
            "hash": _HEX64,
        },
    }


def component_schemas() -> dict[str, Any]:
    metadata = _metadata_properties()
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "request_id"],
                    "properties": {
                        # Every code there is: generated clients get one typed error per code.
                        "code": {"type": "string", "enum": error_codes()},
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
            "properties": metadata,
        },
        "MetadataPatch": {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: v for k, v in metadata.items() if k != "sha256"},
        },
        "Record": {
            "type": "object",
            # size and sha256 describe the stored, identified file: researchers do not get them.
            "required": ["id", "tenant", "content_type", "created_at", "display_name"],
            "properties": _record_properties(metadata),
        },
        "SearchRequest": _search_request(),
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
                "integrity_key_version": {"type": ["integer", "null"]},
                "rewrap": {"type": "object"},
            },
        },
        "SearchPage": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {
                    "type": "array", "items": ref("Record"),
                    "description": "at most `limit` items; fewer, or none, when the scan budget ran out first",
                },
                "next_cursor": {
                    "type": ["string", "null"], "pattern": "^[A-Za-z0-9_-]{32}$",
                    "description": "where the next page resumes; null when nothing is left. May be set on a "
                                   "short or empty page (the scan budget ran out): keep paging until it is null",
                },
                "unreadable": {
                    "type": "array",
                    "description": "matches left out because their data key would not unwrap (present only when any)",
                    "items": {
                        "type": "object", "required": ["id", "code"],
                        "properties": {"id": {"type": "string"}, "code": {"type": "string", "enum": ["key_error"]}},
                    },
                },
                "merged_ids": {"type": "boolean", "description": _MERGED},
            },
        },
        "ErasureRequest": {
            "type": "object", "additionalProperties": False, "required": ["patient_id", "reason"],
            "properties": {"patient_id": _PATIENT_ID, "reason": _REASON, "override_retention": {"type": "boolean"}},
        },
        "ErasureReport": {
            "type": "object", "required": ["shredded", "refused", "seconds"],
            "properties": {
                "shredded": {"type": "integer", "minimum": 0},
                "refused": {"type": "array", "items": {
                    "type": "object", "required": ["id", "code"],
                    "properties": {"id": {"type": "string"}, "code": {"enum": ["legal_hold", "retention_obligation"]}},
                }},
                "seconds": {"type": "number", "minimum": 0},
                "merged_ids": {"type": "boolean", "description": _MERGED},
            },
        },
        "HoldRequest": {
            "type": "object", "additionalProperties": False, "required": ["patient_id", "hold", "reason"],
            "properties": {"patient_id": _PATIENT_ID, "hold": {"type": "boolean"}, "reason": _REASON},
        },
        "HoldReport": {
            "type": "object", "required": ["updated"],
            "properties": {"updated": {"type": "integer", "minimum": 0}},
        },
        "ExportRequest": {
            "type": "object", "additionalProperties": False, "required": ["patient_id"],
            "properties": {"patient_id": _PATIENT_ID},
        },
        "AccessReportRequest": {
            "type": "object", "additionalProperties": False, "required": ["patient_id"],
            "properties": {"patient_id": _PATIENT_ID},
        },
        "AccessReport": {
            "type": "object", "required": ["generated_at", "through_seq", "records", "accesses"],
            "properties": {
                "generated_at": {"type": "string", "format": "date-time"},
                "through_seq": {"type": "integer", "minimum": 0,
                                "description": "the trail's head when the report began: entries up to it are covered"},
                "records": {"type": "array", "items": {"type": "string"},
                            "description": "the patient's records held now in the tenant (shredded ones are no longer linked)"},
                "merged_ids": {"type": "boolean", "description": _MERGED},
                "accesses": {"type": "array", "items": {
                    "type": "object", "required": ["seq", "time", "actor", "action", "outcome", "record_ids"],
                    "properties": {
                        "seq": {"type": "integer", "minimum": 1},
                        "time": {"type": "string", "format": "date-time"},
                        "actor": {
                            "type": "object", "required": ["name", "role"],
                            "properties": {"name": {"type": "string"}, "role": {"type": "string"},
                                           "on_behalf_of": {"type": "string",
                                                            "description": "the person an application acted for, when recorded"}},
                        },
                        "action": {"type": "string", "examples": [a.value for a in AuditAction]},
                        "outcome": {"type": "string", "description": "'ok' or the API error code"},
                        "record_ids": {"type": "array", "items": {"type": "string"},
                                       "description": "this patient's records among those the entry names"},
                    },
                }},
            },
        },
        "SweepReport": {
            "type": "object", "required": ["due", "shredded", "held"],
            "properties": {k: {"type": "integer", "minimum": 0} for k in ("due", "shredded", "held")},
        },
        "AuditEntry": _audit_entry(),
        "AuditPage": {
            "type": "object", "required": ["entries", "next_after"],
            "properties": {
                "entries": {"type": "array", "items": ref("AuditEntry")},
                "next_after": {"type": ["integer", "null"], "description": "pass as 'after' for the next page"},
            },
        },
        "AuditVerification": {
            "type": "object", "required": ["ok", "entries", "head"],
            "properties": {
                "ok": {"type": "boolean"},
                "entries": {"type": "integer", "minimum": 0},
                "head": {**_HEX64, "type": ["string", "null"]},
                "bad_seq": {"type": "integer", "minimum": 1},
                "reason": {"type": "string"},
            },
        },
        "SessionStart": {
            "type": "object", "required": ["token"], "additionalProperties": False,
            "properties": {"token": {"type": "string", "minLength": 1, "maxLength": MAX_JWT_LENGTH}},
        },
        "Session": {
            "type": "object", "required": ["signed_in"],
            "properties": {
                "signed_in": {"type": "boolean"},
                "csrf_token": {"type": "string", "description": "send as X-CSRF-Token on state-changing requests"},
                "tenant": {"type": "string"}, "role": {"type": "string"}, "name": {"type": "string"},
                "via": {"type": "string", "enum": ["token", "oidc"]},
                "idle_timeout": {"type": "number"}, "expires_at": {"type": "string", "format": "date-time"},
            },
        },
    }
