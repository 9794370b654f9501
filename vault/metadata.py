"""Record metadata: validation of client JSON into typed values, and the record dataclasses.

The client sends the metadata of docs/api.md; ``parse_metadata`` turns it into ``Metadata`` or
raises ``UnknownField`` / ``InvalidMetadata`` naming the field (never echoing its value, which
may be personal data). ``apply_patch`` implements JSON merge patch (RFC 7396) over it.

Personal fields (``PERSONAL_FIELDS``) are never stored in the clear: the service seals them
under the record's metadata subkey before they reach the index.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timezone
from typing import Any

from vault.errors import InvalidMetadata, InvalidRequest, UnknownField

MODALITIES = ("clinical", "dermoscopic", "total_body", "3d", "histopathology", "other")
CONSENT_PURPOSES = ("care", "teaching", "publication", "research")
RETENTION_CLASSES = ("medical", "aesthetic", "until")
PERSONAL_FIELDS = ("patient_id", "description", "diagnosis")
# Record fields that fingerprint the identified file, left out wherever personal fields are.
LINKABLE_FIELDS = ("sha256", "received_sha256", "size")
# File name extensions for downloads and exports, by stored content type.
EXTENSIONS = {
    "image/jpeg": "jpg", "image/png": "png", "image/tiff": "tif", "image/heic": "heic",
    "image/webp": "webp", "application/dicom": "dcm", "model/obj": "obj", "model/ply": "ply",
}

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_CODE = re.compile(r"^[A-Za-z0-9.\-]{1,32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Free text: no control characters, and at least one character that is neither control nor
# white space. Written once in a syntax both Python and ECMA-262 (JSON Schema) read the same
# way, so /openapi.json publishes exactly the rule enforced here.
_SPACE = "\\t\\n\\u000b\\f\\r \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
# The same white space as characters, for code that trims it (patient-id normal forms).
WHITE_SPACE = "\t\n\x0b\f\r \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000\ufeff"
_NOT_CONTROL = "[^\\u0000-\\u001f\\u007f]"
TEXT_PATTERN = f"^{_NOT_CONTROL}*[^{_SPACE}\\u0000-\\u001f\\u007f]{_NOT_CONTROL}*$"
_TEXT = re.compile(TEXT_PATTERN)

_FIELDS = (
    "patient_id", "captured_at", "modality", "body_site", "body_site_code", "lesion_id",
    "session_id", "device", "description", "diagnosis", "tags", "consent", "retention",
    "legal_hold", "sha256",
)
_REQUIRED = ("patient_id", "captured_at", "modality", "body_site")
_CONSENT_FIELDS = (*CONSENT_PURPOSES, "method", "recorded_at")


@dataclass(frozen=True)
class Consent:
    care: bool = True
    teaching: bool = False
    publication: bool = False
    research: bool = False
    method: str | None = None
    recorded_at: str | None = None

    def allows(self, purpose: str) -> bool:
        return bool(getattr(self, purpose))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Retention:
    cls: str = "medical"
    until: str | None = None  # ISO date, only for cls == "until"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class": self.cls}
        if self.until is not None:
            out["until"] = self.until
        return out


@dataclass(frozen=True)
class Metadata:
    """What a client may set on a record (docs/api.md, "Record metadata")."""

    patient_id: str
    captured_at: str  # normalised RFC 3339 UTC, "...Z"
    modality: str
    body_site: str
    body_site_code: str | None = None
    lesion_id: str | None = None
    session_id: str | None = None
    device: str | None = None
    description: str | None = None
    diagnosis: str | None = None
    tags: tuple[str, ...] = ()
    consent: Consent = field(default_factory=Consent)
    retention: Retention = field(default_factory=Retention)
    legal_hold: bool = False
    sha256: str | None = None

    @property
    def captured_at_dt(self) -> datetime:
        return parse_timestamp(self.captured_at, "captured_at")

    def personal(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in PERSONAL_FIELDS}

    def to_json(self, *, include_personal: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _FIELDS:
            if name in PERSONAL_FIELDS and not include_personal:
                continue
            value = getattr(self, name)
            if name == "consent" or name == "retention":
                value = value.to_json()
            elif name == "tags":
                value = list(value)
            out[name] = value
        return out


@dataclass(frozen=True)
class RenditionStatus:
    """Where a record's thumbnail and preview stand: ``queued``, ``ready``, ``failed`` or
    ``unavailable`` (a format not rendered), with a reason code unless ready."""

    state: str
    reason: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"state": self.state}
        if self.reason is not None and self.state != "ready":
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class Record:
    """A stored record as the service returns it."""

    id: str
    tenant: str
    metadata: Metadata
    content_type: str
    size: int
    sha256: str
    created_at: str
    updated_at: str
    retain_until: str | None
    key_version: int
    received_sha256: str | None = None
    # Answered from an earlier upload with the same Idempotency-Key (re-read now), not created.
    replayed: bool = field(default=False, compare=False)
    renditions: RenditionStatus | None = None  # None: a record stored before renditions existed

    @property
    def display_name(self) -> str:
        # Non-identifying: the random tail of the id plus clinical facets, never patient data.
        return f"IMG-{self.id[-6:]}_{self.metadata.body_site}_{self.metadata.modality}"

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.content_type, "bin")

    def to_json(self, *, include_personal: bool = True) -> dict[str, Any]:
        """The record as the API shows it. Without personal data (the researcher's view) the
        fingerprints of the identified file go too: ``sha256`` and ``received_sha256`` (a
        digest of the clinical copy, or of the file as the clinic sent it, finds that file
        anywhere it is kept) and ``size`` (its exact length nearly does)."""
        out = self.metadata.to_json(include_personal=include_personal)
        out["sha256"] = self.sha256
        out.update(
            id=self.id,
            tenant=self.tenant,
            content_type=self.content_type,
            size=self.size,
            created_at=self.created_at,
            updated_at=self.updated_at,
            retain_until=self.retain_until,
            key_version=self.key_version,
            display_name=self.display_name,
        )
        if self.received_sha256 is not None:
            out["received_sha256"] = self.received_sha256
        if self.renditions is not None:
            out["renditions"] = self.renditions.to_json()
        if not include_personal:
            for name in LINKABLE_FIELDS:
                out.pop(name, None)
        return out


def format_timestamp(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    # Not strftime: glibc's %Y drops the zero padding of years before 1000 ("405-07-28").
    text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
            f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_timestamp(value: Any, name: str) -> datetime:
    """RFC 3339 with an explicit offset; naive times are refused (ambiguous across clinics)."""
    if not isinstance(value, str) or len(value) > 40 or "T" not in value.upper():
        raise InvalidMetadata(name, f"{name} must be an RFC 3339 timestamp with a time zone")
    text = value.upper().replace("Z", "+00:00")
    # RFC 3339 allows a leap second (":60"); Python's datetime does not: keep it in the minute.
    text = re.sub(r"(T\d{2}:\d{2}):60(\.\d+)?", r"\1:59.999999", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidMetadata(name, f"{name} must be an RFC 3339 timestamp with a time zone") from exc
    if moment.tzinfo is None:
        raise InvalidMetadata(name, f"{name} must include a time zone offset")
    try:
        return moment.astimezone(timezone.utc)
    except (OverflowError, ValueError) as exc:
        raise InvalidMetadata(name, f"{name} is out of range") from exc


def _text(value: Any, name: str, max_len: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidMetadata(name, f"{name} must be a non-empty string of at most {max_len} characters")
    if not _TEXT.fullmatch(value):
        raise InvalidMetadata(name, f"{name} must be text without control characters, not only spaces")
    if not encodable(value):
        raise InvalidMetadata(name, f"{name} must be valid Unicode text")
    return value


def is_text(value: Any, max_len: int) -> bool:
    """The free-text rule (TEXT_PATTERN), also published in /openapi.json, for any module."""
    return isinstance(value, str) and 0 < len(value) <= max_len and bool(_TEXT.fullmatch(value)) and encodable(value)


def encodable(value: str) -> bool:
    """JSON can carry lone surrogates (\\ud800) that no UTF-8 encoder accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _optional_text(value: Any, name: str, max_len: int) -> str | None:
    return None if value is None else _text(value, name, max_len)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidMetadata(name, f"{name} must be true or false")
    return value


def _parse_consent(value: Any, base: Consent | None = None) -> Consent:
    if not isinstance(value, dict):
        raise InvalidMetadata("consent", "consent must be an object")
    for key in value:
        if key not in _CONSENT_FIELDS:
            raise UnknownField(f"consent.{safe_field_name(key)}")
    current = base or Consent()
    updates: dict[str, Any] = {}
    for purpose in CONSENT_PURPOSES:
        if purpose in value:
            raw = value[purpose]
            if raw is None:
                updates[purpose] = getattr(Consent(), purpose)
            else:
                updates[purpose] = _bool(raw, f"consent.{purpose}")
    if "method" in value:
        updates["method"] = _optional_text(value["method"], "consent.method", 32)
    if "recorded_at" in value:
        raw = value["recorded_at"]
        updates["recorded_at"] = (
            None if raw is None else format_timestamp(parse_timestamp(raw, "consent.recorded_at"))
        )
    return replace(current, **updates)


def _parse_retention(value: Any) -> Retention:
    if not isinstance(value, dict):
        raise InvalidMetadata("retention", "retention must be an object")
    for key in value:
        if key not in ("class", "until"):
            raise UnknownField(f"retention.{safe_field_name(key)}")
    cls = value.get("class")
    if cls not in RETENTION_CLASSES:
        raise InvalidMetadata("retention.class", "retention.class is required: medical, aesthetic or until")
    until = value.get("until")
    if cls == "until":
        if not isinstance(until, str):
            raise InvalidMetadata("retention.until", "retention.until must be a date (YYYY-MM-DD)")
        try:
            parsed = date.fromisoformat(until)
        except ValueError as exc:
            raise InvalidMetadata("retention.until", "retention.until must be a date (YYYY-MM-DD)") from exc
        return Retention("until", parsed.isoformat())
    if until is not None:
        raise InvalidMetadata("retention.until", "retention.until is only allowed with class 'until'")
    return Retention(cls)


def _parse_tags(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > 32:
        raise InvalidMetadata("tags", "tags must be a list of at most 32 strings")
    tags = []
    for tag in value:
        tags.append(_text(tag, "tags", 64))
    return tuple(dict.fromkeys(tags))


def safe_field_name(key: Any) -> str:
    """A client-chosen key as it may be echoed in an error: snake_case names only.

    A client that mistakenly keys an object by a patient identifier must not see (or log) it
    echoed back, so anything with digits, capitals or punctuation is withheld.
    """
    text = str(key)
    return text if re.fullmatch(r"[a-z_][a-z_.]{0,39}", text) else "<withheld>"


def _field_value(name: str, value: Any, current: Metadata | None) -> Any:
    if name == "patient_id":
        return _text(value, name, 128)
    if name == "captured_at":
        return format_timestamp(parse_timestamp(value, name))
    if name == "modality":
        if value not in MODALITIES:
            raise InvalidMetadata(name, "modality must be one of " + ", ".join(MODALITIES))
        return value
    if name == "body_site":
        if not isinstance(value, str) or not _SLUG.match(value):
            raise InvalidMetadata(name, "body_site must be a lowercase slug (a-z, 0-9, _ or -)")
        return value
    if name == "body_site_code":
        if value is not None and (not isinstance(value, str) or not _CODE.match(value)):
            raise InvalidMetadata(name, "body_site_code must be a code of letters, digits, '.' or '-'")
        return value
    if name in ("lesion_id", "session_id", "device"):
        return _optional_text(value, name, 128)
    if name == "description":
        return _optional_text(value, name, 4096)
    if name == "diagnosis":
        return _optional_text(value, name, 1024)
    if name == "tags":
        return () if value is None else _parse_tags(value)
    if name == "consent":
        if value is None:
            return Consent()
        return _parse_consent(value, current.consent if current else None)
    if name == "retention":
        return Retention() if value is None else _parse_retention(value)
    if name == "legal_hold":
        return False if value is None else _bool(value, name)
    if name == "sha256":
        if value is not None and (not isinstance(value, str) or not _HEX64.match(value.lower())):
            raise InvalidMetadata(name, "sha256 must be 64 hexadecimal characters")
        return None if value is None else value.lower()
    raise UnknownField(safe_field_name(name))


def _check_names(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise InvalidRequest("metadata must be a JSON object")
    for key in document:
        if key not in _FIELDS:
            raise UnknownField(safe_field_name(key))
    return document


def parse_metadata(document: Any) -> Metadata:
    """Validate a create request's metadata object."""
    document = _check_names(document)
    for name in _REQUIRED:
        if document.get(name) is None:
            raise InvalidMetadata(name, f"{name} is required")
    values = {name: _field_value(name, value, None) for name, value in document.items()}
    return Metadata(**values)


def apply_patch(current: Metadata, patch: Any) -> Metadata:
    """JSON merge patch: present keys replace, null removes an optional field (RFC 7396)."""
    patch = _check_names(patch)
    if "sha256" in patch:
        raise InvalidMetadata("sha256", "sha256 is fixed at upload and cannot be changed")
    values: dict[str, Any] = {}
    for name, value in patch.items():
        if value is None and name in _REQUIRED:
            raise InvalidMetadata(name, f"{name} is required and cannot be removed")
        values[name] = _field_value(name, value, current)
    return replace(current, **values)
