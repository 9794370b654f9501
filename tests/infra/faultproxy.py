"""A TCP proxy on loopback that breaks connections on purpose, for the client's retry tests.

Each accepted connection takes the next ``Plan`` from the queue (pass-through when it is empty):
cut the connection after so many bytes of the request or of the response have gone through, or
flip one byte of the response. Real sockets, a real server behind it: what a client sees is
what clinic Wi-Fi does to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from dataclasses import dataclass


@dataclass
class Plan:
    cut_request_after: int | None = None  # bytes client -> server, then both sides closed
    cut_response_after: int | None = None  # bytes server -> client, then both sides closed
    flip_response_byte: int | None = None  # offset of a response byte to corrupt


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.plans: deque[Plan] = deque()
        self.connections = 0
        self.cuts = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.random_cut_ratio = 0.0  # with no plan queued: the share of connections cut at random
        # Random request cuts fall in the first this many bytes (a whole image body, for the benchmark).
        self.request_cut_span = 64 << 10
        self._random = random.Random(7)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()  # ends the pipes; the accept tasks then finish on their own
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _plan(self) -> Plan:
        if self.plans:
            return self.plans.popleft()
        if self._random.random() < self.random_cut_ratio:
            if self._random.random() < 0.5:
                return Plan(cut_request_after=self._random.randrange(1, self.request_cut_span))
            return Plan(cut_response_after=self._random.randrange(1, 2048))
        return Plan()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        plan = self._plan()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        self._writers.update((writer, up_writer))
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer, plan.cut_request_after, None)),
            asyncio.ensure_future(self._pipe(up_reader, writer, plan.cut_response_after, plan.flip_response_byte)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            failed = [p.exception() for p in pipes if p.done() and not p.cancelled()]
            if any(isinstance(exc, _Cut) for exc in failed):
                self.cuts += 1
            elif not any(failed):
                await asyncio.wait(pipes)  # one side finished: let the other drain
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._writers.difference_update((writer, up_writer))
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.transport.abort()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    cut_after: int | None, flip_at: int | None) -> None:
        passed = 0
        while True:
            data = await reader.read(16 << 10)
            if not data:
                with contextlib.suppress(Exception):
                    writer.write_eof()
                return
            if flip_at is not None and passed <= flip_at < passed + len(data):
                i = flip_at - passed
                data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
            if cut_after is not None and passed + len(data) >= cut_after:
                writer.write(data[:cut_after - passed])
                with contextlib.suppress(Exception):
                    await writer.drain()
                raise _Cut()
            writer.write(data)
            await writer.drain()
            passed += len(data)


class _Cut(Exception):
    pass


async def serve(upstream: str, cut_ratio: float, request_cut_span: int, seed: int) -> None:
    """Run a proxy until SIGTERM or SIGINT, printing its URL (one line) once it listens and a
    JSON line of what it did (connections, cuts) when it stops."""
    import json
    import signal

    host, _, port = upstream.rpartition(":")
    proxy = FaultProxy(host or "127.0.0.1", int(port))
    proxy.random_cut_ratio = cut_ratio
    proxy.request_cut_span = request_cut_span
    proxy._random.seed(seed)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(await proxy.start(), flush=True)
    try:
        await stop.wait()
    finally:
        await proxy.close()
        print(json.dumps({"connections": proxy.connections, "cuts": proxy.cuts}), flush=True)


if __name__ == "__main__":  # the locust scenario's flaky network (bench/flaky.py) runs one in its own process
    import argparse

    parser = argparse.ArgumentParser(description="a TCP proxy that cuts connections at random")
    parser.add_argument("--upstream", required=True, help="host:port")
    parser.add_argument("--cut-ratio", type=float, default=0.25)
    parser.add_argument("--request-cut-span", type=int, default=8 << 20)
    parser.add_argument("--seed", type=int, default=7)
    options = parser.parse_args()
    asyncio.run(serve(options.upstream, options.cut_ratio, options.request_cut_span, options.seed))
