"""Console sessions: a bearer credential given once, then an opaque cookie; CSRF and origin checks.

The web console (``/console/``) signs in by sending a token once (``POST /v1/session``); the
daemon keeps the credential server-side and answers with a random session id in an ``HttpOnly;
SameSite=Strict`` cookie, so the token never stays within reach of the page's JavaScript. A
request carrying the cookie (and no ``Authorization`` header) is authenticated by that stored
credential, checked again on every request exactly as a bearer token is: the same principal,
role and tenant, a revoked or expired token ends the session on its next request. A session
grants nothing its credential does not.

Sessions live in the index (``console_sessions``, vault/index/console_sessions.py), so that
every worker process of ``imagevault serve --workers N`` over the same data directory knows
each of them: a browser's next request may land on any worker, and a sign-out in one ends the
session in all at once (the row is deleted). The row is filed under the SHA-256 of the session
id and encrypted under a key derived from the id, which only the cookie holds: the index, a
backup or a stolen disk gives neither the credential nor a way to resume or forge a session.
A session survives a restart of the daemon (its cookie still opens its row) until its idle
timeout or lifetime ends.

The idle timeout slides without a write per request: a request rewrites the row's last use only
when the stored one is older than ``touch_interval`` (a tenth of the idle timeout, at most 60
s), so a session idles out between ``idle_timeout - touch_interval`` and ``idle_timeout`` seconds
after its last request. Dead rows are deleted when looked up, and at sign-in (at most once per
``touch_interval``, and always when the cap ``max_sessions``, counted in the index, is reached).

Cross-site request forgery: the cookie is ``SameSite=Strict`` (a browser does not send it with
a request started by another site), and besides, every state-changing request authenticated by
it must carry the session's synchronizer token in ``X-CSRF-Token`` and must not come from
another origin (``Origin`` naming another host, or ``Sec-Fetch-Site`` other than
``same-origin``/``none``). Bearer-token clients are not affected: they send no cookie.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web

from vault.auth import Principal
from vault.errors import CrossSiteRequest, IndexTampered, Overloaded, Unauthorized
from vault.index import schema
from vault.index.console_sessions import (
    Session,
    clear_times,
    open_session,
    seal_session,
)
from vault.index.lmdb import Index, IndexTxn

COOKIE_NAME = "imagevault_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sec-Fetch-Site values a browser sends for a request the console itself made (``none``: typed
# into the address bar, a bookmark).
_OWN_SITE = frozenset({"same-origin", "none"})


class SessionStore:
    """The console sessions, kept in the index, with an idle timeout and an absolute lifetime.

    ``clock`` is epoch seconds (sessions cross processes, so a wall clock: the service's clock
    once attached, a parameter so that tests need not sleep)."""

    def __init__(self, *, idle_timeout: float, lifetime: float, max_sessions: int,
                 clock: Callable[[], float] | None = None, index: Index | None = None) -> None:
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self.touch_interval = min(60.0, idle_timeout / 10)
        self.clock: Callable[[], float] = clock or time.time
        self._clock_given = clock is not None
        self._index = index
        self._last_purge = float("-inf")

    def attach(self, index: Index, clock: Callable[[], float]) -> None:
        """Use the service's index, and its clock unless the store was given one."""
        self._index = index
        if not self._clock_given:
            self.clock = clock

    @property
    def index(self) -> Index:
        if self._index is None:
            raise RuntimeError("session store used before the service opened")
        return self._index

    def count(self) -> int:
        """Rows in the index, dead ones not yet purged included."""
        return self.index.read(lambda txn: txn.count(schema.DB_CONSOLE_SESSIONS))

    def _alive(self, last_used: float, expires: float, now: float) -> bool:
        return now - last_used <= self.idle_timeout and now <= expires

    def _purge_txn(self, txn: IndexTxn, now: float) -> int:
        dead = []
        for key, raw in txn.scan_items(schema.DB_CONSOLE_SESSIONS, b""):
            times = clear_times(raw)
            if times is None or not self._alive(*times, now):
                dead.append(key)
        for key in dead:
            txn.delete_key(schema.DB_CONSOLE_SESSIONS, key)
        return len(dead)

    async def purge(self) -> int:
        """Delete every idle or expired row; how many."""
        now = self.clock()
        self._last_purge = now
        return await self.index.write(lambda txn: self._purge_txn(txn, now))

    async def start(self, credential: str, principal: Principal) -> tuple[str, Session]:
        """A new session for a credential already authenticated as ``principal``; its id (for
        the cookie) and the session. ``Overloaded`` when ``max_sessions`` are alive."""
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        session = Session(credential, principal, secrets.token_urlsafe(32), now, now, now + self.lifetime)
        row_key = schema.console_session_key(session_id)
        purge = now - self._last_purge >= self.touch_interval
        if purge:
            self._last_purge = now

        def put(txn: IndexTxn) -> bool:
            if purge or txn.count(schema.DB_CONSOLE_SESSIONS) >= self.max_sessions:
                self._purge_txn(txn, now)
                if txn.count(schema.DB_CONSOLE_SESSIONS) >= self.max_sessions:
                    return False
            txn.put_bytes(schema.DB_CONSOLE_SESSIONS, row_key, seal_session(txn.seal, row_key, session_id, session))
            return True

        if not await self.index.write(put):
            raise Overloaded("too many console sessions")
        return session_id, session

    async def find(self, session_id: str) -> Session:
        """The live session of this id, its use recorded; ``Unauthorized`` for an unknown, idle,
        expired or tampered one (a dead or tampered row is deleted)."""
        row_key = schema.console_session_key(session_id)

        def load(txn: IndexTxn) -> tuple[bytes | None, Session | None]:
            raw = txn.get_bytes(schema.DB_CONSOLE_SESSIONS, row_key)
            if raw is None:
                return None, None
            try:
                return raw, open_session(txn.seal, row_key, session_id, raw)
            except IndexTampered:  # counted by the seal; refused like an unknown session
                return raw, None

        raw, session = self.index.read(load)
        if raw is None:
            raise Unauthorized()
        now = self.clock()
        if session is None:
            await self._delete_if_unchanged(row_key, raw)
            raise Unauthorized()
        if not self._alive(session.last_used, session.expires, now):
            await self._delete_if_unchanged(row_key, raw)
            raise Unauthorized()
        if now - session.last_used >= self.touch_interval:
            session.last_used = now

            def touch(txn: IndexTxn) -> bool:
                # Only the row as read: a sign-out in another process since then must stand.
                if txn.get_bytes(schema.DB_CONSOLE_SESSIONS, row_key) != raw:
                    return False
                txn.put_bytes(schema.DB_CONSOLE_SESSIONS, row_key, seal_session(txn.seal, row_key, session_id, session))
                return True

            if not await self.index.write(touch):
                raise Unauthorized()
        return session

    async def _delete_if_unchanged(self, row_key: bytes, raw: bytes) -> None:
        def delete(txn: IndexTxn) -> None:
            if txn.get_bytes(schema.DB_CONSOLE_SESSIONS, row_key) == raw:
                txn.delete_key(schema.DB_CONSOLE_SESSIONS, row_key)

        await self.index.write(delete)

    async def end(self, session_id: str) -> None:
        """Sign out: the row is deleted, so every process refuses the cookie from now on."""
        row_key = schema.console_session_key(session_id)
        await self.index.write(lambda txn: txn.delete_key(schema.DB_CONSOLE_SESSIONS, row_key))

    def expires_at(self, session: Session) -> float:
        """Epoch seconds at which the session ends whatever its use."""
        return session.expires


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
