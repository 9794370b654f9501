"""The client's exceptions: one per error code of the API (docs/api.md, "Errors").

A response with the error JSON raises the class of its ``code``; a code this client does not
know yet (a newer server) raises the class of its status family, so callers that catch
``Unavailable`` keep working. Transport failures that outlive the retries raise
``TransportFailed``.
"""

from __future__ import annotations

from typing import Any


class ImagevaultClientError(Exception):
    """Base of everything the client raises."""


class TransportFailed(ImagevaultClientError):
    """The server could not be reached, or the connection broke, on every attempt."""


class ApiError(ImagevaultClientError):
    """An error answer of the API."""

    code = "internal_error"

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None,
                 field: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.field = field
        self.retry_after = retry_after


# Families, by status: what a caller usually catches.
class BadRequest(ApiError):
    code = "bad_request"


class Unauthorized(ApiError):
    code = "unauthorized"


class Forbidden(ApiError):
    code = "forbidden"


class NotFound(ApiError):
    code = "not_found"


class Conflict(ApiError):
    code = "conflict"


class Unavailable(ApiError):
    """Temporary: retried by the client before it is raised."""

    code = "unavailable"


class ServerError(ApiError):
    code = "internal_error"


# One class per code.
class InvalidRequest(BadRequest):
    code = "invalid_request"


class ClientDisconnected(InvalidRequest):
    code = "client_disconnected"


class InvalidMetadata(BadRequest):
    code = "invalid_metadata"


class UnknownField(BadRequest):
    code = "unknown_field"


class MissingPart(BadRequest):
    code = "missing_part"


class NotDeidentifiable(Forbidden):
    code = "not_deidentifiable"


class CrossSiteRequest(Forbidden):
    """A console session's request without its CSRF token or from another origin (the client
    uses bearer tokens and never meets it)."""

    code = "csrf_rejected"


class MethodNotAllowed(BadRequest):
    code = "method_not_allowed"


class RequestTimeout(BadRequest):
    code = "request_timeout"


class LegalHoldActive(Conflict):
    code = "legal_hold"


class RetentionObligation(Conflict):
    code = "retention_obligation"


class RewrapIncomplete(Conflict):
    code = "rewrap_incomplete"


class IdempotencyKeyInFlight(Conflict):
    code = "idempotency_key_in_flight"


class IdempotencyKeyMismatch(BadRequest):
    code = "idempotency_key_mismatch"


class ContentMismatch(BadRequest):
    code = "content_mismatch"


class OffsetMismatch(Conflict):
    code = "offset_mismatch"


class UnsupportedTusVersion(BadRequest):
    code = "unsupported_tus_version"


class ChecksumMismatch(BadRequest):
    code = "checksum_mismatch"


class RenditionPending(Conflict):
    """The thumbnail or preview is still being made: ask again after ``retry_after`` seconds."""

    code = "rendition_pending"


class TooLarge(BadRequest):
    code = "too_large"


class UriTooLong(BadRequest):
    code = "uri_too_long"


class UnsupportedMediaType(BadRequest):
    code = "unsupported_media_type"


class RangeNotSatisfiable(BadRequest):
    code = "range_not_satisfiable"


class DigestMismatch(BadRequest):
    code = "digest_mismatch"


class RenditionUnavailable(BadRequest):
    code = "rendition_unavailable"


class HeadersTooLarge(BadRequest):
    code = "headers_too_large"


class IntegrityError(ServerError):
    code = "integrity_error"


class KeyError_(ServerError):  # noqa: N801 - not the builtin KeyError
    code = "key_error"


class KmsUnavailable(Unavailable):
    code = "kms_unavailable"


class StoreUnavailable(Unavailable):
    code = "store_unavailable"


class IndexUnavailable(Unavailable):
    code = "index_unavailable"


class IdpUnavailable(Unavailable):
    code = "idp_unavailable"


class Overloaded(Unavailable):
    code = "overloaded"


class NotReady(Unavailable):
    code = "not_ready"


class HttpVersionNotSupported(ServerError):
    code = "http_version_not_supported"


class InsufficientStorage(ServerError):
    code = "insufficient_storage"


class DownloadCorrupt(ImagevaultClientError):
    """A downloaded image did not match the digest the server announced (nothing was kept)."""


def _subclasses(cls: type[ApiError]) -> list[type[ApiError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


BY_CODE: dict[str, type[ApiError]] = {cls.code: cls for cls in [ApiError, *_subclasses(ApiError)]}
_BY_STATUS = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 503: Unavailable}


def error_for(status: int, body: Any, retry_after: float | None) -> ApiError:
    """The exception for an error answer (its JSON body parsed, or None if it had none)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": "internal_error" if status >= 500 else "bad_request", "message": f"HTTP {status}"}
    code = str(error.get("code") or "")
    cls = BY_CODE.get(code) or _BY_STATUS.get(status) or (ServerError if status >= 500 else BadRequest)
    return cls(status, code, str(error.get("message") or ""), error.get("request_id"), error.get("field"), retry_after)
