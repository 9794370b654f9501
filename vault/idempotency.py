"""The ``Idempotency-Key`` request header (IETF httpapi idempotency-key draft) and what identifies
a request made with it: the caller's scope and the request's fingerprint material.

No I/O and no keys here: ``vault.services.idempotency`` files the keys and outcomes under keyed
HMACs (docs/format.md, "Idempotency entries"), so nothing in this module is ever stored as it is.
"""

from __future__ import annotations

import json
from typing import Any

from vault.auth import Principal
from vault.errors import InvalidRequest

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255


def parse_idempotency_key(header: str | None) -> str | None:
    """The key of an ``Idempotency-Key`` header, or None without one.

    The draft makes the field an RFC 8941 sf-string: a double-quoted string of printable ASCII
    in which ``"`` and ``\\`` are escaped with ``\\``. The key (unescaped) must be 1 to
    ``MAX_KEY_LENGTH`` characters; anything else is 400 ``invalid_request`` (a UUID sent without
    quotes included, so that a client learns the syntax at once rather than on another server).
    """
    if header is None:
        return None
    text = header.strip(" \t")
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise _invalid()
    out: list[str] = []
    escaped = False
    for char in text[1:-1]:
        if not " " <= char <= "~":
            raise _invalid()
        if escaped:
            if char not in '"\\':
                raise _invalid()
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            raise _invalid()
        else:
            out.append(char)
    if escaped or not out or len(out) > MAX_KEY_LENGTH:
        raise _invalid()
    return "".join(out)


def _invalid() -> InvalidRequest:
    error = InvalidRequest(f"{KEY_HEADER} must be a quoted string (RFC 8941 sf-string) of 1 to {MAX_KEY_LENGTH} "
                           "printable ASCII characters")
    error.field = KEY_HEADER  # type: ignore[attr-defined]
    return error


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def scope_of(principal: Principal) -> bytes:
    """Whose keys these are: the tenant and the caller's name as the audit trail names it
    (how it authenticated, its name, the user an application acts for). Not the token: a
    refreshed token of the same name (a JWT's subject) keeps its keys, and two users of one
    application never see each other's outcomes."""
    return canonical([principal.tenant, principal.via, principal.name, principal.on_behalf_of])


def keyed_message(principal: Principal, key: str) -> bytes:
    """What a lookup HMAC covers: the caller's scope, then the key."""
    return scope_of(principal) + b"\x00" + key.encode()


def upload_material(metadata: dict[str, Any], content_type: str, received_sha256: str) -> bytes:
    """What identifies an upload request: its metadata (parsed and re-encoded canonically, so
    white space and key order do not matter), the file's content type and the SHA-256 of the
    file as received."""
    return canonical({"metadata": metadata, "content_type": content_type, "sha256": received_sha256})


def erasure_material(patient_id: str, reason: str, override_retention: bool) -> bytes:
    """What identifies an erasure request (it holds the patient id: only ever HMACed under a key
    that a shred epoch destroys)."""
    return canonical({"patient_id": patient_id, "reason": reason, "override_retention": override_retention})
