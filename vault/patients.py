"""Requests about one patient (``/v1/patients/*``, role dpo): validated JSON → typed values.

The patient identifier travels only in these bodies (never in a URL), is used only to compute
the tenant's blind index, and is never echoed in an error, a log line or an audit entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vault.errors import InvalidRequest, UnknownField, invalid_field as _bad
from vault.metadata import is_text, safe_field_name

MAX_REASON = 1024


@dataclass(frozen=True)
class ErasureRequest:
    patient_id: str = field(repr=False)
    reason: str = field(repr=False)
    override_retention: bool = False


@dataclass(frozen=True)
class HoldRequest:
    patient_id: str = field(repr=False)
    hold: bool
    reason: str = field(repr=False)


@dataclass(frozen=True)
class ExportRequest:
    patient_id: str = field(repr=False)


def _object(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    for key in body:
        if key not in allowed:
            raise UnknownField(safe_field_name(key))
    return body


def _patient_id(body: dict[str, Any]) -> str:
    value = body.get("patient_id")
    if not is_text(value, 128):
        raise _bad("patient_id", "patient_id must be a non-empty string of at most 128 characters")
    return value


def _reason(body: dict[str, Any]) -> str:
    value = body.get("reason")
    if not is_text(value, MAX_REASON):
        raise _bad("reason", f"reason must be a non-empty string of at most {MAX_REASON} characters")
    return value


def _flag(body: dict[str, Any], name: str, default: bool | None) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise _bad(name, f"{name} must be true or false")
    return value


def parse_erasure(body: Any) -> ErasureRequest:
    body = _object(body, ("patient_id", "reason", "override_retention"))
    return ErasureRequest(_patient_id(body), _reason(body), _flag(body, "override_retention", False))


def parse_hold(body: Any) -> HoldRequest:
    body = _object(body, ("patient_id", "hold", "reason"))
    return HoldRequest(_patient_id(body), _flag(body, "hold", None), _reason(body))


def parse_export(body: Any) -> ExportRequest:
    body = _object(body, ("patient_id",))
    return ExportRequest(_patient_id(body))


@dataclass(frozen=True)
class AccessReportRequest:
    patient_id: str = field(repr=False)


def parse_access_report(body: Any) -> AccessReportRequest:
    body = _object(body, ("patient_id",))
    return AccessReportRequest(_patient_id(body))
