"""Search requests: validation of the JSON body into a ``SearchQuery``, and cursors.

A cursor is the 24-byte suffix (captured_at || record id) of the last key returned, base64url
encoded: it names a position in capture-time order, not a query, so it carries no personal data
and a page boundary is exact even while records are being added.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vault.errors import InvalidRequest, UnknownField, invalid_field as _bad
from vault.index import schema
from vault.metadata import CONSENT_PURPOSES, MODALITIES, encodable, parse_timestamp, safe_field_name

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_STRING_FILTERS = ("patient_id", "lesion_id", "session_id", "modality", "body_site", "tag", "consent")
_FIELDS = (*_STRING_FILTERS, "captured_from", "captured_to", "limit", "cursor")


@dataclass(frozen=True)
class SearchQuery:
    patient_id: str | None = None
    lesion_id: str | None = None
    session_id: str | None = None
    modality: str | None = None
    body_site: str | None = None
    tag: str | None = None
    consent: str | None = None
    captured_from: datetime | None = None
    captured_to: datetime | None = None
    limit: int = DEFAULT_LIMIT
    cursor: bytes | None = None

    def facet_filters(self) -> dict[str, str]:
        """The facet filters that are set, by API name (``tag``, ``body_site``, ...)."""
        return {
            name: value for name in schema.SEARCH_FACETS
            if (value := getattr(self, name)) is not None
        }


def parse_search(body: Any) -> SearchQuery:
    if not isinstance(body, dict):
        raise InvalidRequest("search body must be a JSON object")
    for key in body:
        if key not in _FIELDS:
            raise UnknownField(safe_field_name(key))
    values: dict[str, Any] = {}
    for name in _STRING_FILTERS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value or len(value) > 128 or not encodable(value):
            raise _bad(name, f"{name} must be a non-empty string of at most 128 characters")
        values[name] = value
    if values.get("modality") is not None and values["modality"] not in MODALITIES:
        raise _bad("modality", "modality must be one of " + ", ".join(MODALITIES))
    if values.get("consent") is not None and values["consent"] not in CONSENT_PURPOSES:
        raise _bad("consent", "consent must be one of " + ", ".join(CONSENT_PURPOSES))
    for name in ("captured_from", "captured_to"):
        if body.get(name) is not None:
            try:
                values[name] = parse_timestamp(body[name], name)
            except Exception as exc:  # InvalidMetadata → a search error, same field
                raise _bad(name, f"{name} must be an RFC 3339 timestamp with a time zone") from exc
    limit = body.get("limit", DEFAULT_LIMIT)
    if limit is None:
        limit = DEFAULT_LIMIT
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)  # JSON has one number type: 100.0 is the integer 100
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise _bad("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    values["limit"] = limit
    cursor = body.get("cursor")
    if cursor is not None and cursor != "":  # "" = from the start, like null
        values["cursor"] = decode_cursor(cursor)
    return SearchQuery(**values)


def encode_cursor(suffix: bytes) -> str:
    return base64.urlsafe_b64encode(suffix).decode().rstrip("=")


def decode_cursor(text: Any) -> bytes:
    if not isinstance(text, str) or len(text) > 64:
        raise _bad("cursor", "cursor is not valid")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _bad("cursor", "cursor is not valid") from exc
    if len(raw) != schema.SUFFIX_LEN:
        raise _bad("cursor", "cursor is not valid")
    return raw
