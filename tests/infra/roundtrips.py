"""A TCP proxy on loopback that counts round trips between a client and a server.

A round trip is a turn of the conversation: the client sends (one or more writes), then the
server answers. The proxy counts, on each connection, every time client bytes arrive after the
server last spoke (or first): what a client pays in waiting, whatever number of statements it
packed into the turn (PostgreSQL's pipeline mode sends several). Counted on the wire, between
real sockets, so it sees every statement the client's driver sends, not what the code under
test says it sends.

It runs on a thread of its own (plain sockets, a thread per direction), not on an event loop:
the code under test may block its loop on a database round trip.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class RoundTripCounter:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._turns = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept_loop, name="roundtrip-proxy", daemon=True).start()

    @classmethod
    def in_front_of(cls, dsn: str) -> tuple[RoundTripCounter, str]:
        """A proxy for the server of ``dsn`` and the DSN that goes through it."""
        parts = urlsplit(dsn)
        proxy = cls(parts.hostname or "127.0.0.1", parts.port or 5432)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{proxy.port}"
        return proxy, urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    @property
    def turns(self) -> int:
        with self._lock:
            return self._turns

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            state = {"server_spoke": True}  # the client's first bytes open a turn
            threading.Thread(target=self._pipe, args=(client, server, state, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, state, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, state: dict[str, bool], from_client: bool) -> None:
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                with self._lock:
                    # Flipped before forwarding: the answer cannot come before the request is sent on.
                    if from_client:
                        if state["server_spoke"]:
                            self._turns += 1
                        state["server_spoke"] = False
                    else:
                        state["server_spoke"] = True
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
