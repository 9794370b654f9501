"""One console session as the index's ``console_sessions`` database holds it.

Key: ``SHA-256(session id)``; the id itself exists only in the browser's cookie. Value:
``0x04 || MAC || BODY``, with ``BODY = LAST_USED (8) || EXPIRES (8) || nonce (12) ||
AES-256-GCM(KS, nonce, JSON, aad)``: the two times in the clear (a purge that holds no cookie
must find the dead rows), everything else (the credential, the CSRF token, the principal shown to
the page, the start time) encrypted under ``KS = HKDF-SHA256(session id)``. The AAD binds the
ciphertext to its key and to the two clear times, and the MAC under the index integrity key
(``IndexSeal.seal_session``) binds the whole value to its key once more, so that even a cookie
holder with write access to the index cannot stretch a session's times. docs/format.md,
"Console sessions", gives the bytes.

The server never stores the session id, so the index, a backup or a stolen disk holds neither
the credential nor anything from which a session could be resumed or forged.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from vault import codec
from vault.auth import Principal, Role
from vault.errors import BlobCorrupt, IndexTampered
from vault.index.integrity import IndexSeal
from vault.store.format import hkdf_sha256_32
from vault.store.personal import open_document, seal_document

SESSION_INFO = b"imagevault/v1/console-session"
AAD_DOMAIN = SESSION_INFO + b"\x00"
_TIMES = struct.Struct(">QQ")  # LAST_USED, EXPIRES: milliseconds since 1970-01-01T00:00:00Z


@dataclass
class Session:
    """One signed-in console user. ``credential`` is the token given at sign-in; ``principal`` is
    what it named then (shown to the page, never used to authorise). Times are epoch seconds."""

    credential: str = field(repr=False)
    principal: Principal
    csrf_token: str = field(repr=False)
    started: float
    last_used: float
    expires: float  # absolute: the session ends then whatever its use


def session_key(session_id: str) -> bytes:
    """KS, the key the session's secrets are encrypted under: only the cookie gives it."""
    return hkdf_sha256_32(session_id.encode("utf-8", "surrogatepass"), b"", SESSION_INFO)


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def seal_session(seal: IndexSeal, row_key: bytes, session_id: str, session: Session) -> bytes:
    times = _TIMES.pack(_ms(session.last_used), _ms(session.expires))
    p = session.principal
    secret = json.dumps({
        "credential": session.credential, "csrf": session.csrf_token, "tenant": p.tenant, "role": p.role.value,
        "name": p.name, "via": p.via, "started": session.started,
    }, separators=(",", ":"), sort_keys=True).encode()
    body = times + seal_document(session_key(session_id), AAD_DOMAIN + row_key + times, secret)
    return seal.seal_session(row_key, body)


def clear_times(raw: bytes) -> tuple[float, float] | None:
    """(last used, expires) of a stored value, unauthenticated: only for finding rows to delete
    (a forged time can only get a row deleted, which whoever writes the index can do anyway)."""
    if len(raw) < 1 + 32 + _TIMES.size:
        return None
    last_used, expires = _TIMES.unpack_from(raw, 1 + 32)
    return last_used / 1000, expires / 1000


def open_session(seal: IndexSeal, row_key: bytes, session_id: str, raw: bytes) -> Session:
    """The session stored in ``raw``; ``IndexTampered`` if the value fails its MAC or its
    encryption (a value edited, moved under another key, or not made for this cookie)."""
    body = seal.open_session(row_key, raw)
    times = body[:_TIMES.size]
    if len(times) != _TIMES.size:
        raise IndexTampered("session", row_key)
    try:
        doc = codec.loads(open_document(session_key(session_id), AAD_DOMAIN + row_key + times, body[_TIMES.size:]))
        last_used, expires = _TIMES.unpack(times)
        principal = Principal(doc["tenant"], Role(doc["role"]), doc["name"], via=doc["via"])
        return Session(doc["credential"], principal, doc["csrf"], float(doc["started"]), last_used / 1000,
                       expires / 1000)
    except (BlobCorrupt, KeyError, TypeError, ValueError) as exc:
        raise IndexTampered("session", row_key) from exc
