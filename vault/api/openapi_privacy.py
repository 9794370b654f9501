"""OpenAPI paths and schemas of the privacy operations (patients, retention sweep, audit).

Merged into the document by ``vault.api.openapi.build_openapi``; kept in its own module so
that the core document and these endpoints can change without stepping on each other.
"""

from __future__ import annotations

from typing import Any

from vault.api.openapi import _errors, _ref
from vault.audit.chain import AuditAction
from vault.audit.store import MAX_PAGE
from vault.metadata import TEXT_PATTERN
from vault.patients import MAX_REASON

# As vault/patients.py checks them: not blank, no control characters in a patient id.
_PATIENT_ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": TEXT_PATTERN}
_REASON = {"type": "string", "minLength": 1, "maxLength": MAX_REASON, "pattern": TEXT_PATTERN}
_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}


def privacy_schemas() -> dict[str, Any]:
    return {
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
        "SweepReport": {
            "type": "object", "required": ["due", "shredded", "held"],
            "properties": {k: {"type": "integer", "minimum": 0} for k in ("due", "shredded", "held")},
        },
        "AuditEntry": {
            "type": "object",
            "required": ["seq", "time", "tenant", "actor", "action", "record_ids", "outcome", "details", "prev_hash", "hash"],
            "properties": {
                "seq": {"type": "integer", "minimum": 1},
                "time": {"type": "string", "format": "date-time"},
                "tenant": {"type": "string", "description": "the tenant the entry is about, or '-' (global)"},
                "actor": {
                    "type": "object", "required": ["name", "role", "tenant"],
                    "properties": {"name": {"type": "string"}, "role": {"type": "string"}, "tenant": {"type": "string"}},
                },
                "action": {"type": "string", "examples": [a.value for a in AuditAction]},
                "record_ids": {"type": "array", "items": {"type": "string"}},
                "outcome": {"type": "string", "description": "'ok' or the API error code"},
                "details": {"type": "object"},
                "prev_hash": _HEX64,
                "hash": _HEX64,
            },
        },
        "AuditPage": {
            "type": "object", "required": ["entries", "next_after"],
            "properties": {
                "entries": {"type": "array", "items": _ref("AuditEntry")},
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
    }


def _json_op(operation_id: str, summary: str, request: str, response: str, *codes: int) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
        "responses": {
            "200": {"description": "Done", "content": {"application/json": {"schema": _ref(response)}}},
            **_errors(*codes),
        },
    }


def privacy_paths() -> dict[str, Any]:
    bearer = [{"bearer": []}]
    export = _json_op(
        "exportPatient", "Subject access export: every image of the patient plus manifest.json, as a streamed zip (role dpo)",
        "ExportRequest", "ExportRequest", 400, 401, 403, 413, 415, 500, 503,
    )
    export["responses"]["200"] = {
        "description": "A zip archive, streamed. A blob failing its integrity check after streaming began aborts the connection (truncated transfer).",
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    }
    return {
        "/v1/patients/erase": {"post": _json_op(
            "erasePatient", "Crypto-shred every record of a patient (role dpo); refusals are listed",
            "ErasureRequest", "ErasureReport", 400, 401, 403, 413, 415, 503,
        )},
        "/v1/patients/legal-hold": {"post": _json_op(
            "setPatientLegalHold", "Place or lift a legal hold on every record of a patient (role dpo)",
            "HoldRequest", "HoldReport", 400, 401, 403, 413, 415, 503,
        )},
        "/v1/patients/export": {"post": export},
        "/v1/admin/retention/sweep": {"post": {
            "operationId": "retentionSweep",
            "summary": "Shred every record whose retention has ended and that is not on legal hold (role operator)",
            "security": bearer,
            "parameters": [{"name": "dry_run", "in": "query", "required": False, "schema": {"type": "boolean", "default": False}}],
            "responses": {
                "200": {"description": "Counts", "content": {"application/json": {"schema": _ref("SweepReport")}}},
                **_errors(400, 401, 403, 503),
            },
        }},
        "/v1/audit": {"get": {
            "operationId": "listAudit",
            "summary": "Audit entries after a sequence number: the caller's tenant and global ones (role auditor)",
            "security": bearer,
            "parameters": [
                {"name": "after", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100}},
            ],
            "responses": {
                "200": {"description": "A page of entries", "content": {"application/json": {"schema": _ref("AuditPage")}}},
                **_errors(400, 401, 403, 503),
            },
        }},
        "/v1/audit/verify": {"get": {
            "operationId": "verifyAudit",
            "summary": "Verify the whole hash chain; ok with the head hash, or the first bad seq (role auditor)",
            "security": bearer,
            "responses": {
                "200": {"description": "Verification result", "content": {"application/json": {"schema": _ref("AuditVerification")}}},
                **_errors(401, 403, 503),
            },
        }},
    }
