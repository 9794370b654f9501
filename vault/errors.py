"""The one exception hierarchy of imagevault.

Every failure the service can report is one of these; the HTTP layer maps them to the error
JSON of docs/api.md in one place (``vault.api.middleware``) by reading ``status`` and ``code``.
Third-party exceptions (lmdb, hvac, requests, botocore, OSError) are translated into these at
the boundary of the module that imports the library, with ``raise ... from exc``.

Messages never contain personal data (patient identifiers, descriptions, diagnoses) nor key
material: they are shown to clients and written to logs.

::

    ImageVaultError                      500 internal_error
    ├── ClientError                      400 bad_request
    │   ├── InvalidRequest               400 invalid_request
    │   │   └── ClientDisconnected       400 client_disconnected (no one is left to read it)
    │   ├── InvalidMetadata              400 invalid_metadata   (names the field)
    │   ├── UnknownField                 400 unknown_field      (names the field)
    │   ├── MissingPart                  400 missing_part
    │   ├── Unauthorized                 401 unauthorized
    │   ├── Forbidden                    403 forbidden
    │   │   ├── NotDeidentifiable        403 not_deidentifiable (no de-identified copy for a researcher)
    │   │   └── CrossSiteRequest         403 csrf_rejected      (a console request without its CSRF token or from another origin)
    │   ├── NotFound                     404 not_found
    │   ├── MethodNotAllowed             405 method_not_allowed
    │   ├── RequestTimeout               408 request_timeout    (a body that stalls: slow-loris)
    │   ├── Conflict                     409 conflict
    │   │   ├── OffsetMismatch           409 offset_mismatch    (a tus PATCH not at the upload's offset)
    │   │   ├── IdempotencyKeyInFlight   409 idempotency_key_in_flight (a request with that key is running)
    │   │   ├── LegalHoldActive          409 legal_hold
    │   │   ├── RetentionObligation      409 retention_obligation
    │   │   ├── RewrapIncomplete         409 rewrap_incomplete
    │   │   └── RenditionPending         409 rendition_pending  (+ Retry-After: its job is queued)
    │   ├── UnsupportedTusVersion        412 unsupported_tus_version (Tus-Resumable other than 1.0.0)
    │   ├── TooLarge                     413 too_large
    │   ├── UriTooLong                   414 uri_too_long       (request line over the limit)
    │   ├── UnsupportedMediaType         415 unsupported_media_type
    │   │   └── ContentMismatch          415 content_mismatch   (the bytes are not of the declared type)
    │   ├── RangeNotSatisfiable          416 range_not_satisfiable
    │   ├── DigestMismatch               422 digest_mismatch
    │   ├── IdempotencyKeyMismatch       422 idempotency_key_mismatch (key reused for another request)
    │   ├── RenditionUnavailable         422 rendition_unavailable (a format not rendered, or it failed)
    │   ├── HeadersTooLarge              431 headers_too_large  (a header field or the count over the limit)
    │   └── ChecksumMismatch             460 checksum_mismatch  (a tus PATCH whose Upload-Checksum fails)
    ├── BlobCorrupt                      500 integrity_error
    ├── IndexTampered                    500 integrity_error    (a record or token failed its index MAC)
    ├── KeyMaterialError                 500 key_error          (wrapped key unusable: retired/corrupt)
    ├── Unavailable                      503 unavailable        (+ Retry-After)
    │   ├── KmsUnavailable               503 kms_unavailable
    │   ├── StoreUnavailable             503 store_unavailable
    │   ├── IndexUnavailable             503 index_unavailable
    │   ├── IdentityProviderUnavailable  503 idp_unavailable    (its signing keys cannot be fetched)
    │   └── Overloaded                   503 overloaded         (uploads or connections at their cap)
    ├── HttpVersionNotSupported          505 http_version_not_supported
    └── InsufficientStorage              507 insufficient_storage
"""

from __future__ import annotations


class ImageVaultError(Exception):
    """Base of every imagevault error. ``message`` is safe to show to a client."""

    status = 500
    code = "internal_error"
    default_message = "internal error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


def error_codes() -> list[str]:
    """Every code the API's error JSON can carry: the exception tree's, and ``not_ready``,
    which only ``GET /readyz`` answers (it is a report, not an exception)."""
    codes: set[str] = {READINESS_CODE}
    pending: list[type[ImageVaultError]] = [ImageVaultError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(codes)


READINESS_CODE = "not_ready"


class ClientError(ImageVaultError):
    status = 400
    code = "bad_request"
    default_message = "bad request"


class InvalidRequest(ClientError):
    code = "invalid_request"
    default_message = "invalid request"


class ClientDisconnected(InvalidRequest):
    """The client went away mid-request: its upload is discarded, nothing is stored."""

    code = "client_disconnected"
    default_message = "client disconnected before the request body was complete"


def invalid_field(name: str, message: str) -> InvalidRequest:
    """An ``invalid_request`` that names the offending body key or query parameter."""
    error = InvalidRequest(message)
    error.field = name  # type: ignore[attr-defined]
    return error


class FieldError(ClientError):
    """An error about one named field of a request body."""

    def __init__(self, field: str, message: str | None = None) -> None:
        self.field = field
        super().__init__(message or f"{self.default_message}: {field}")


class InvalidMetadata(FieldError):
    code = "invalid_metadata"
    default_message = "invalid metadata field"


class UnknownField(FieldError):
    code = "unknown_field"
    default_message = "unknown field"


class MissingPart(ClientError):
    code = "missing_part"
    default_message = "multipart body must have a 'metadata' part followed by a 'file' part"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"
    default_message = "missing, invalid, expired or revoked bearer token"


class Forbidden(ClientError):
    status = 403
    code = "forbidden"
    default_message = "this role may not perform this operation"


class CrossSiteRequest(Forbidden):
    """A state-changing request authenticated by a console session cookie that lacks the
    session's CSRF token or comes from another origin (vault/api/sessions.py)."""

    code = "csrf_rejected"
    default_message = "cross-site request refused: missing or wrong CSRF token, or another origin"


class NotDeidentifiable(Forbidden):
    """A researcher asked for an image that cannot be served de-identified: a format whose
    embedded identifiers imagevault cannot remove with certainty, or a stored file that does not
    parse as its format. Researchers only ever receive de-identified bytes (docs/format.md,
    "De-identified copies for researchers")."""

    code = "not_deidentifiable"
    default_message = "this image cannot be served de-identified"


class NotFound(ClientError):
    status = 404
    code = "not_found"
    default_message = "not found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"
    default_message = "method not allowed"

    def __init__(self, message: str | None = None, allow: str = "") -> None:
        self.allow = allow  # the methods the resource supports: the Allow header (RFC 9110)
        super().__init__(message)


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"
    default_message = "request body stalled; upload abandoned"


class Conflict(ClientError):
    status = 409
    code = "conflict"
    default_message = "conflict"


class OffsetMismatch(Conflict):
    code = "offset_mismatch"
    default_message = "Upload-Offset does not match the upload's offset; ask HEAD for it and resume there"


class IdempotencyKeyInFlight(Conflict):
    """A request with the same ``Idempotency-Key`` (same caller) is still being processed."""

    code = "idempotency_key_in_flight"
    default_message = "a request with this Idempotency-Key is still in progress; retry later"


class LegalHoldActive(Conflict):
    code = "legal_hold"
    default_message = "record is under legal hold"


class RetentionObligation(Conflict):
    code = "retention_obligation"
    default_message = "record is still under a retention obligation"


class RewrapIncomplete(Conflict):
    code = "rewrap_incomplete"
    default_message = "data keys are still wrapped under old key versions"


class UnsupportedTusVersion(ClientError):
    status = 412
    code = "unsupported_tus_version"
    default_message = "Tus-Resumable must be 1.0.0"


class RenditionPending(Conflict):
    code = "rendition_pending"
    default_message = "the rendition is being made; retry shortly"

    def __init__(self, message: str | None = None, retry_after: int = 2) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class TooLarge(ClientError):
    status = 413
    code = "too_large"
    default_message = "request body too large"


class UriTooLong(ClientError):
    status = 414
    code = "uri_too_long"
    default_message = "request line too long"


class UnsupportedMediaType(ClientError):
    status = 415
    code = "unsupported_media_type"
    default_message = "content type not allowed"


class ContentMismatch(UnsupportedMediaType):
    """The first bytes of a file do not match its declared content type (docs/api.md,
    "Content verification"): nothing is stored."""

    code = "content_mismatch"
    default_message = "file content does not match its declared content type"


class RangeNotSatisfiable(ClientError):
    status = 416
    code = "range_not_satisfiable"
    default_message = "range not satisfiable"

    def __init__(self, size: int, message: str | None = None) -> None:
        self.size = size
        super().__init__(message)


class DigestMismatch(ClientError):
    status = 422
    code = "digest_mismatch"
    default_message = "sha256 of the received file does not match the declared digest"


class IdempotencyKeyMismatch(ClientError):
    """An ``Idempotency-Key`` already used (by the same caller) for a different request."""

    status = 422
    code = "idempotency_key_mismatch"
    default_message = "this Idempotency-Key was used for a different request"


class RenditionUnavailable(ClientError):
    status = 422
    code = "rendition_unavailable"
    default_message = "this image has no rendition"


class HeadersTooLarge(ClientError):
    status = 431
    code = "headers_too_large"
    default_message = "request header field too long, or too many header fields"


class ChecksumMismatch(ClientError):
    """The tus checksum extension's own status: the chunk is discarded, the offset stays."""

    status = 460
    code = "checksum_mismatch"
    default_message = "the chunk does not match its Upload-Checksum; it was discarded"


class BlobCorrupt(ImageVaultError):
    """Any integrity failure of a stored blob: bit-rot, tampering, truncation, a swapped blob.

    Deliberately vague (like Fernet's ``InvalidToken``): the caller learns that the blob must
    not be served, not which check failed.
    """

    code = "integrity_error"
    default_message = "stored image failed its integrity check"


class IndexTampered(ImageVaultError):
    """An index value failed authentication (``vault.index.integrity``): tampering, a planted
    or rolled-back entry, bit rot. Same code and message family as ``BlobCorrupt``: the caller
    learns that the value must not be used, not which check failed."""

    code = "integrity_error"
    default_message = "index entry failed its integrity check"

    def __init__(self, kind: str, key: bytes) -> None:
        super().__init__()
        self.kind = kind  # "record" or "token"
        self.key = key  # the record id, or the token document's key (a SHA-256, never a token)


class KeyMaterialError(ImageVaultError):
    """A wrapped key could not be unwrapped for a reason other than unavailability."""

    code = "key_error"
    default_message = "data key could not be unwrapped"


class Unavailable(ImageVaultError):
    status = 503
    code = "unavailable"
    default_message = "service temporarily unavailable"

    def __init__(self, message: str | None = None, retry_after: int = 5) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class KmsUnavailable(Unavailable):
    code = "kms_unavailable"
    default_message = "key management service unavailable"


class StoreUnavailable(Unavailable):
    code = "store_unavailable"
    default_message = "blob store unavailable"


class IndexUnavailable(Unavailable):
    code = "index_unavailable"
    default_message = "index temporarily unavailable"


class IdentityProviderUnavailable(Unavailable):
    """A JWT names a signing key that imagevault does not have and cannot fetch now: the token
    may well be valid, so the client should retry rather than log in again (not a 401)."""

    code = "idp_unavailable"
    default_message = "identity provider keys unavailable"


class Overloaded(Unavailable):
    code = "overloaded"
    default_message = "too many concurrent uploads"


class HttpVersionNotSupported(ImageVaultError):
    status = 505
    code = "http_version_not_supported"
    default_message = "only HTTP/1.0 and HTTP/1.1 are served"


class InsufficientStorage(ImageVaultError):
    status = 507
    code = "insufficient_storage"
    default_message = "not enough storage space"
