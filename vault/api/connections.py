"""Connection hygiene: a deadline for the request head, a cap on open connections, and the API's
error JSON for requests that aiohttp rejects before the application sees them.

aiohttp keeps a connection for as long as a client trickles header lines, accepts every
connection, and answers a malformed request line or an oversized header with plain text. All
three happen in its per-connection protocol object (``RequestHandler``), which no application
hook reaches, so the daemon serves through a subclass of it: ``GuardedAppRunner`` builds a
``GuardedServer`` whose connections are ``GuardedRequestHandler``\\ s sharing one
``ConnectionGuard`` (the count, the limits, the metrics). docs/design.md, "Connection hygiene",
gives the reasons for each deadline.

The head deadline runs from the moment a connection opens and, on a kept-alive connection,
from the first byte of the next request (the idle wait before it is ``keepalive_timeout``); it
stops when the head is complete. Trickling header lines one at a time does not move it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import (
    BadHttpMessage, BadHttpMethod, BadStatusLine, InvalidHeader, InvalidURLError, LineTooLong,
)

from vault.api.errors import error_response, http_exception_as_error
from vault.api.keys import VAULT
from vault.errors import (
    HeadersTooLarge, HttpVersionNotSupported, ImageVaultError, InvalidRequest, Overloaded, UriTooLong,
)
from vault.metrics import Metrics

log = logging.getLogger("vault.api")

# A refused connection reads (and drops) what the client sends for at most this long after the
# 503, so that the client reads the answer instead of a reset caused by its unread request.
REFUSED_LINGER = 1.0
REFUSED_RETRY_AFTER = 2

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class ConnectionGuard:
    """What every connection of one server shares: limits, the open count and the metrics."""

    def __init__(self, *, header_timeout: float, max_connections: int) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.open = 0
        self.metrics: Metrics | None = None  # the service's, once the application has started

    def admit(self) -> bool:
        if self.open >= self.max_connections:
            self.evicted("connection_cap")
            return False
        self.open += 1
        if self.metrics is not None:
            self.metrics.connections_open.set(self.open)
        return True

    def release(self) -> None:
        self.open -= 1
        if self.metrics is not None:
            self.metrics.connections_open.set(self.open)

    def evicted(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_evicted.labels(reason).inc()


def parse_error(status: int, exc: BaseException | None, max_line_size: int) -> ImageVaultError:
    """The error of the hierarchy for a request aiohttp's parser refused.

    Messages are fixed texts: aiohttp's own quote the offending bytes, which may be anything a
    client typed (a patient id in a URL), and end up in logs and responses.
    """
    if isinstance(exc, LineTooLong):
        # args: (line, limit, actual size); the request line has its own limit (max_line_size).
        limit = exc.args[1] if len(exc.args) > 1 else None
        return UriTooLong() if limit == max_line_size else HeadersTooLarge()
    if status != 400 or not isinstance(exc, BadHttpMessage):
        return ImageVaultError()
    text = exc.message
    if "Too many headers" in text:
        return HeadersTooLarge()
    if isinstance(exc, BadStatusLine) and "HTTP version" in text:
        return HttpVersionNotSupported()
    if isinstance(exc, (BadHttpMethod, BadStatusLine)):
        return InvalidRequest("malformed request line")
    if isinstance(exc, InvalidURLError):
        return InvalidRequest("malformed request target")
    if "Content-Length" in text:
        return InvalidRequest("malformed or conflicting Content-Length")
    if "chunk" in text.lower() or "Transfer-Encoding" in text:
        return InvalidRequest("malformed chunked transfer encoding")
    if isinstance(exc, InvalidHeader) or "header" in text.lower():
        return InvalidRequest("malformed header field")
    return InvalidRequest("malformed HTTP request")


def _closing_error_response(error: ImageVaultError) -> web.Response:
    request_id = uuid.uuid4().hex
    response = error_response(error, request_id)
    response.headers["X-Request-Id"] = request_id
    response.force_close()
    return response


def _raw_response(response: web.Response) -> bytes:
    """A complete HTTP/1.1 message for a connection that is refused before any request."""
    body = response.body if isinstance(response.body, bytes) else b""
    lines = [f"HTTP/1.1 {response.status} {response.reason}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol plus the head deadline, the connection cap and JSON errors."""

    __slots__ = ("_admitted", "_guard", "_head_after_next_byte", "_head_timer")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_after_next_byte = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit():
            self._refuse(transport)
            return
        self._admitted = True
        super().connection_made(transport)
        self._start_head_deadline()

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        """503 and close; the connections already open are not touched."""
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        error = Overloaded("too many open connections; retry later", retry_after=REFUSED_RETRY_AFTER)
        transport.write(_raw_response(_closing_error_response(error)))
        if transport.can_write_eof():
            transport.write_eof()
            self._loop.call_later(REFUSED_LINGER, transport.close)
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return  # a refused connection: its request is never read
        if self._head_after_next_byte and data:
            self._head_after_next_byte = False
            self._start_head_deadline()
        super().data_received(data)

    def eof_received(self) -> None:
        if not self._admitted:
            return None  # the transport closes itself: the refused client has read the 503
        return super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.release()
        self._stop_head_deadline()
        super().connection_lost(exc)

    def head_received(self) -> None:
        """A complete request head was parsed (called for each request, before it is handled)."""
        self._head_after_next_byte = False
        self._stop_head_deadline()

    def _start_head_deadline(self) -> None:
        self._stop_head_deadline()
        self._head_timer = self._loop.call_later(self._guard.header_timeout, self._head_deadline_passed)

    def _stop_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self.transport is None:
            return
        self._guard.evicted("header_timeout")
        log.debug("closed a connection from %s: no complete request head within %.0f s",
                  self.peername, self._guard.header_timeout)
        self.force_close()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            # Raised before the middlewares run (an Expect header aiohttp does not accept).
            resp = _closing_error_response(http_exception_as_error(resp))
        result = await super().finish_response(request, resp, start_time)
        self._head_after_next_byte = True
        return result

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The error JSON, instead of aiohttp's plain text, for a request it could not parse."""
        error = parse_error(status, exc, self.max_line_size)
        if error.status >= 500 and not isinstance(error, HttpVersionNotSupported):
            log.error("request from %s failed in the HTTP layer (%s)", request.remote,
                      exc.__class__.__name__ if exc is not None else status)
        else:
            # The class only: aiohttp's message quotes the offending bytes.
            log.info("refused a malformed request from %s: %s (%s)", request.remote, error.code,
                     exc.__class__.__name__ if exc is not None else status)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        return _closing_error_response(error)


class GuardedServer(web.Server):
    """aiohttp's low-level server, making ``GuardedRequestHandler`` connections."""

    def __init__(self, handler: Handler, *, request_factory: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        self.guard = guard
        self._handler_kwargs = kwargs

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            if isinstance(protocol, GuardedRequestHandler):
                protocol.head_received()
            return request_factory(message, payload, protocol, writer, task)  # type: ignore[no-any-return]

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            # llhttp accepts HTTP/0.9 and HTTP/2.0 request lines; neither is HTTP/1.x.
            if request.version not in (HttpVersion10, HttpVersion11):
                return _closing_error_response(HttpVersionNotSupported())
            return await handler(request)

        super().__init__(handle, request_factory=make_request, **kwargs)

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, guard=self.guard, **self._handler_kwargs)


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a ``GuardedServer``; handler options go in as keywords
    (the application's ``handler_args`` do not reach this server)."""

    def __init__(self, app: web.Application, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the application's startup: the Vault opens
        self.guard.metrics = self.app[VAULT].metrics
        return GuardedServer(
            server.request_handler, request_factory=server.request_factory, guard=self.guard, **self._kwargs,
        )
