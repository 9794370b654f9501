"""Authentication of the index's security-relevant values: records, token documents, the
states of resumable uploads, idempotency outcomes and console sessions.

Whoever can write the index file (or plant a backup) but holds no key-encryption key must not be
able to move a record to another tenant, grant research consent, lift a legal hold, shorten a
retention, re-point a patient's blind-index value, or mint and promote a token. So every stored
record and token document carries an HMAC-SHA256 under the *index integrity key*: 32 random
bytes held in the ``meta`` database wrapped by the KEK, like the tenants' blind-index keys
(``vault.services.integrity`` creates, unwraps and upgrades it). docs/format.md gives the bytes.

A record is authenticated whole (every field, not a list of the sensitive ones, so a field
added later cannot be forgotten); a token document whole except ``last_used_at``, which the
idle limit rewrites on use. A value that fails its check raises ``IndexTampered`` and is never
used to decide anything: access it would grant is refused, a sweep skips it.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Callable
from typing import Any

from vault.errors import IndexTampered
from vault.macs import KeyedHmac

RECORD_FORMAT = 0x02  # first byte of a sealed record value (a bare JSON record starts with "{")
OUTCOME_FORMAT = 0x03  # first byte of a sealed idempotency outcome
SESSION_FORMAT = 0x04  # first byte of a sealed console session
MAC_LEN = 32
RECORD_DOMAIN = b"imagevault/v1/index-record\x00"
TOKEN_DOMAIN = b"imagevault/v1/index-token\x00"
UPLOAD_DOMAIN = b"imagevault/v1/index-upload\x00"
OUTCOME_DOMAIN = b"imagevault/v1/index-idempotency\x00"
SESSION_DOMAIN = b"imagevault/v1/index-console-session\x00"
PKCE_DOMAIN = b"imagevault/v1/console-pkce-verifier\x00"
LOOKUP_DOMAIN = b"imagevault/v1/idempotency-lookup\x00"
TOKEN_UNSEALED = ("mac", "last_used_at")


def canonical(doc: dict[str, Any]) -> bytes:
    """The one JSON encoding the index writes and the MACs cover."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class IndexSeal:
    """The unwrapped index integrity key, and the checks made with it.

    ``on_failure(kind)`` is called once per failed check (the metrics counter)."""

    def __init__(self, key: bytes, on_failure: Callable[[str], None] | None = None) -> None:
        if len(key) != 32:
            raise ValueError("index integrity key must be 32 bytes")
        self._key = key
        # The key's padded blocks hashed once (vault/macs.py): every record a search, a read or
        # a sweep touches is checked, and this is ~4x cheaper per record than hmac.digest.
        self._hmac = KeyedHmac(key)
        self._on_failure = on_failure

    def _mac(self, domain: bytes, key: bytes, body: bytes) -> bytes:
        return self._hmac.digest(domain + key + body)

    def _failed(self, kind: str, key: bytes) -> IndexTampered:
        if self._on_failure is not None:
            self._on_failure(kind)
        return IndexTampered(kind, key)

    # Sealed values: FORMAT (1 byte) || MAC || JSON, the MAC over the value's own key too (a
    # value copied under another key fails). Each kind has its own domain, so that a record value
    # can never pass for an upload state or an outcome, or the other way round.
    def _seal(self, fmt: int, domain: bytes, key: bytes, body: bytes) -> bytes:
        return bytes([fmt]) + self._mac(domain, key, body) + body

    def _open(self, fmt: int, domain: bytes, kind: str, key: bytes, raw: bytes) -> bytes:
        """The JSON of a sealed value, authenticated; ``IndexTampered`` otherwise."""
        if len(raw) <= 1 + MAC_LEN or raw[0] != fmt:
            raise self._failed(kind, key)
        body = raw[1 + MAC_LEN:]
        if not hmac.compare_digest(raw[1:1 + MAC_LEN], self._mac(domain, key, body)):
            raise self._failed(kind, key)
        return body

    # records: 0x02 || MAC || JSON
    def seal_record(self, record_id: bytes, body: bytes) -> bytes:
        return self._seal(RECORD_FORMAT, RECORD_DOMAIN, record_id, body)

    def open_record(self, record_id: bytes, raw: bytes) -> bytes:
        return self._open(RECORD_FORMAT, RECORD_DOMAIN, "record", record_id, raw)

    # resumable upload states: 0x02 || MAC || JSON, in their own domain
    def seal_upload(self, upload_id: bytes, body: bytes) -> bytes:
        return self._seal(RECORD_FORMAT, UPLOAD_DOMAIN, upload_id, body)

    def open_upload(self, upload_id: bytes, raw: bytes) -> bytes:
        return self._open(RECORD_FORMAT, UPLOAD_DOMAIN, "upload", upload_id, raw)

    # idempotency outcomes: 0x03 || MAC || JSON, keyed by their entry (an outcome moved to
    # another caller's or key's entry fails)
    def seal_outcome(self, entry_key: bytes, body: bytes) -> bytes:
        return self._seal(OUTCOME_FORMAT, OUTCOME_DOMAIN, entry_key, body)

    def open_outcome(self, entry_key: bytes, raw: bytes) -> bytes:
        return self._open(OUTCOME_FORMAT, OUTCOME_DOMAIN, "idempotency", entry_key, raw)

    # console sessions: 0x04 || MAC || the session's body (already encrypted under a key only
    # its cookie gives), keyed by SHA-256(session id)
    def seal_session(self, session_key: bytes, body: bytes) -> bytes:
        return self._seal(SESSION_FORMAT, SESSION_DOMAIN, session_key, body)

    def open_session(self, session_key: bytes, raw: bytes) -> bytes:
        return self._open(SESSION_FORMAT, SESSION_DOMAIN, "session", session_key, raw)

    def lookup_key(self, message: bytes) -> bytes:
        """HMAC-SHA256 under the integrity key of ``LOOKUP_DOMAIN || message``: where an upload's
        Idempotency-Key is filed, not testable without the KEK."""
        return self._hmac.digest(LOOKUP_DOMAIN + message)

    def pkce_verifier(self, message: str) -> str:
        """The PKCE code verifier of a console sign-in at the identity provider:
        base64url(HMAC-SHA256(KI, PKCE_DOMAIN || message)), 43 characters, the same in every
        process over this index, so that nothing about the sign-in needs to be remembered."""
        digest = hmac.digest(self._key, PKCE_DOMAIN + message.encode("utf-8", "surrogatepass"), "sha256")
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    # token documents: {"mac": hex, ...}
    def _token_mac(self, key: bytes, doc: dict[str, Any]) -> str:
        body = canonical({k: v for k, v in doc.items() if k not in TOKEN_UNSEALED})
        return self._mac(TOKEN_DOMAIN, key, body).hex()

    def seal_token(self, key: bytes, doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, "mac": self._token_mac(key, doc)}

    def check_token(self, key: bytes, doc: dict[str, Any]) -> dict[str, Any]:
        mac = doc.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, self._token_mac(key, doc)):
            raise self._failed("token", key)
        return doc


def record_body(raw: bytes) -> bytes:
    """The JSON of a record value without checking it: for tools that hold no key (a sealed
    value) and for the one-time upgrade of an index written before records were sealed."""
    if raw[:1] == bytes([RECORD_FORMAT]):
        return raw[1 + MAC_LEN:]
    return raw
