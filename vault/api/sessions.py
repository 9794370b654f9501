"""Console sessions: a bearer credential given once, then an opaque cookie; CSRF and origin checks.

The web console (``/console/``) signs in by sending a token once (``POST /v1/session``); the
daemon keeps the credential server-side and answers with a random session id in an ``HttpOnly;
SameSite=Strict`` cookie, so the token never stays within reach of the page's JavaScript. A
request carrying the cookie (and no ``Authorization`` header) is authenticated by that stored
credential, checked again on every request exactly as a bearer token is: the same principal,
role and tenant, a revoked or expired token ends the session on its next request. A session
grants nothing its credential does not.

Sessions live in this process's memory only, keyed by the SHA-256 of their id: nothing about
them reaches the disk, a restart signs every console user out (they paste their token or sign
in again), and the daemon is a single process, so no other worker needs to see them.

Cross-site request forgery: the cookie is ``SameSite=Strict`` (a browser does not send it with
a request started by another site), and besides, every state-changing request authenticated by
it must carry the session's synchronizer token in ``X-CSRF-Token`` and must not come from
another origin (``Origin`` naming another host, or ``Sec-Fetch-Site`` other than
``same-origin``/``none``). Bearer-token clients are not affected: they send no cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from vault.auth import Principal
from vault.errors import CrossSiteRequest, Overloaded, Unauthorized

COOKIE_NAME = "imagevault_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sec-Fetch-Site values a browser sends for a request the console itself made (``none``: typed
# into the address bar, a bookmark).
_OWN_SITE = frozenset({"same-origin", "none"})


@dataclass
class Session:
    """One signed-in console user. ``credential`` is the token given at sign-in, kept in memory
    only; ``principal`` is what it named then (shown to the page, never used to authorise)."""

    credential: str = field(repr=False)
    principal: Principal
    csrf_token: str = field(repr=False)
    started: float  # clock seconds
    last_used: float
    wall_started: float  # epoch seconds, for the absolute expiry shown to the page


class SessionStore:
    """The daemon's console sessions, with an idle timeout and an absolute lifetime.

    ``clock`` is monotonic seconds (a parameter so that tests need not sleep)."""

    def __init__(self, *, idle_timeout: float, lifetime: float, max_sessions: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: dict[bytes, Session] = {}

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()

    def __len__(self) -> int:
        return len(self._sessions)

    def _alive(self, session: Session, now: float) -> bool:
        return now - session.last_used <= self.idle_timeout and now - session.started <= self.lifetime

    def _purge(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if not self._alive(s, now)]:
            del self._sessions[key]

    def start(self, credential: str, principal: Principal) -> tuple[str, Session]:
        """A new session for a credential already authenticated as ``principal``; its id (for
        the cookie) and the session. ``Overloaded`` when ``max_sessions`` are alive."""
        now = self.clock()
        if len(self._sessions) >= self.max_sessions:
            self._purge(now)
            if len(self._sessions) >= self.max_sessions:
                raise Overloaded("too many console sessions")
        session_id = secrets.token_urlsafe(32)
        session = Session(credential, principal, secrets.token_urlsafe(32), now, now, time.time())
        self._sessions[self._key(session_id)] = session
        return session_id, session

    def find(self, session_id: str) -> Session:
        """The live session of this id, marked as used now; ``Unauthorized`` for an unknown,
        idle or expired one (which is forgotten)."""
        key = self._key(session_id)
        session = self._sessions.get(key)
        now = self.clock()
        if session is None:
            raise Unauthorized()
        if not self._alive(session, now):
            del self._sessions[key]
            raise Unauthorized()
        session.last_used = now
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(self._key(session_id), None)

    def expires_at(self, session: Session) -> float:
        """Epoch seconds at which the session ends whatever its use."""
        return session.wall_started + self.lifetime


def request_origin_ok(request: web.Request) -> bool:
    """Whether the browser says this request comes from the daemon's own origin: an ``Origin``
    (if sent) naming the host the request was sent to, and a ``Sec-Fetch-Site`` (if sent) of
    ``same-origin`` or ``none``. Host and port are compared, not the scheme, so that a
    TLS-terminating proxy that keeps ``Host`` does not break the console."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in _OWN_SITE:
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()


def check_cross_site(request: web.Request, session: Session) -> None:
    """``CrossSiteRequest`` unless a cookie-authenticated request is one the console made: any
    request from another site, and a state-changing one without the session's CSRF token."""
    if not request_origin_ok(request):
        raise CrossSiteRequest()
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), session.csrf_token.encode()):
        raise CrossSiteRequest()


def set_session_cookie(request: web.Request, response: web.StreamResponse, session_id: str, max_age: float) -> None:
    response.set_cookie(COOKIE_NAME, session_id, path="/", httponly=True, samesite="Strict",
                        secure=request.secure, max_age=int(max_age))


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE_NAME, path="/", httponly=True, samesite="Strict", secure=request.secure)
