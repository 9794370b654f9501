"""Hostile connections against the real daemon (subprocess, loopback only): requests aiohttp
rejects itself get the error JSON; clients that trickle a request head or an upload body are
cut off and their upload slots freed while normal clients are served; past max_connections a
new connection gets 503 and the open ones carry on. Outcomes only: latency is bench/slow_clients.py's.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest

from tests.conftest import JPEG_HEAD, jpeg, sample_metadata, upload_body
from tests.infra.daemon import Daemon, cli

HOST = "127.0.0.1"


async def exchange(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send ``raw`` on a new connection and read until the daemon closes it."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def metric(text: str, name: str, reason: str | None = None) -> float:
    label = f'{{reason="{reason}"}}' if reason else ""
    match = re.search(rf"^{re.escape(name + label)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def metrics_text(port: int) -> str:
    raw = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return parse_response(raw)[2].decode()


def start_daemon(tmp_path_factory: pytest.TempPathFactory, **settings: str) -> tuple[Daemon, str]:
    root = tmp_path_factory.mktemp("hygiene")
    data_dir = root / "data"
    cli(data_dir, "init")
    token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "app", "--ttl", "1d")
    env = {f"IMAGEVAULT_{name.upper()}": value for name, value in settings.items()}
    return Daemon(data_dir, root / "daemon.log", env=env), token.stdout.strip()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    daemon, token = start_daemon(
        tmp_path_factory, header_timeout="1", keepalive_timeout="30", max_connections="1000",
        body_read_timeout="3", min_upload_rate="4096", upload_rate_window="1", max_concurrent_uploads="8",
    )
    daemon.token = token
    yield daemon
    daemon.stop()


MALFORMED = {
    "garbage request line": (b"GARBAGE\r\n\r\n", 400, "invalid_request"),
    "bad method": (b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    "over-long request line": (b"GET /" + b"a" * 33000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    "over-long header field": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 17000 + b"\r\n\r\n", 431, "headers_too_large"),
    "too many headers": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
        431, "headers_too_large",
    ),
    "malformed header line": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "invalid_request"),
    "missing Host on HTTP/1.1": (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "invalid_request"),
    "non-numeric Content-Length": (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n{}", 400, "invalid_request",
    ),
    "two Content-Lengths": (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "invalid_request",
    ),
    "invalid chunk size": (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "invalid_request",
    ),
    "HTTP/1.2": (b"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
    "HTTP/2.0 as text": (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
    "HTTP/0.9": (b"GET /healthz\r\n\r\n", 505, "http_version_not_supported"),
    "unknown Expect": (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\n{}", 417, "expectation_failed",
    ),
    "unknown route": (b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
    "method not allowed": (b"PUT /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405, "method_not_allowed"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_requests_aiohttp_rejects_itself_get_the_error_json(daemon, case):
    raw, status, code = MALFORMED[case]
    got_status, headers, body = parse_response(await exchange(daemon.port, raw))
    assert got_status == status, body
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["request_id"] == headers["x-request-id"]
    # aiohttp's own messages quote the offending bytes; ours never do.
    assert "aaaa" not in error["message"] and "GARBAGE" not in error["message"]


async def test_an_over_long_patient_id_in_a_url_is_not_logged(daemon):
    secret = b"PATIENT-SECRET-4242"
    raw = b"GET /v1/images/" + secret + b"x" * 33000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    status, _, body = parse_response(await exchange(daemon.port, raw))
    assert status == 414 and secret not in body
    assert secret not in daemon.log_path.read_bytes()


async def test_a_client_trickling_header_lines_is_cut_off_at_the_head_deadline(daemon):
    before = metric(await metrics_text(daemon.port), "imagevault_connections_evicted_total", "header_timeout")
    reader, writer = await asyncio.open_connection(HOST, daemon.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    lines_sent = 0
    with pytest.raises(ConnectionError):
        # One line every 0.2 s would go on for 20 s; the 1 s deadline does not move with them.
        for lines_sent in range(100):
            await asyncio.sleep(0.2)
            writer.write(b"X-Trickle-%d: 1\r\n" % lines_sent)
            await writer.drain()
            if reader.at_eof():
                raise ConnectionResetError("closed by the daemon")
    assert lines_sent < 50
    writer.close()
    after = metric(await metrics_text(daemon.port), "imagevault_connections_evicted_total", "header_timeout")
    assert after >= before + 1


async def test_a_kept_alive_connection_is_served_again_and_then_held_to_the_deadline(daemon):
    reader, writer = await asyncio.open_connection(HOST, daemon.port)
    for _ in range(3):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        await reader.readexactly(length)
        await asyncio.sleep(0.5)  # idle between requests: keepalive_timeout, not header_timeout
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # then half a head and nothing more
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, with no response
    writer.close()


async def upload(session: aiohttp.ClientSession, daemon: Daemon, data: bytes) -> int:
    headers = {"Authorization": f"Bearer {daemon.token}"}
    async with session.post(f"{daemon.url}/v1/images", data=upload_body(data, sample_metadata()), headers=headers) as response:
        await response.read()
        return response.status


async def slow_body_client(daemon: Daemon) -> bytes:
    """A valid upload whose file part then arrives at 50 bytes/s: below min_upload_rate."""
    metadata = json.dumps(sample_metadata()).encode()
    boundary = b"slowboundary"
    prefix = (
        b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n"
        + metadata + b"\r\n--" + boundary
        + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    head = (
        f"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {daemon.token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\nContent-Length: {len(prefix) + 10_000_000}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(HOST, daemon.port)
    response = asyncio.create_task(reader.read())
    try:
        writer.write(head + prefix + JPEG_HEAD)  # the file's head is a JPEG's; then it trickles
        for _ in range(600):  # at most 60 s of trickling; the daemon ends it within a few
            if response.done():
                break
            writer.write(b"\xff" * 5)
            await writer.drain()
            await asyncio.sleep(0.1)
        return await asyncio.wait_for(response, 15)
    except ConnectionError:
        return b""
    finally:
        response.cancel()
        writer.close()


async def slow_header_client(port: int, stop: asyncio.Event) -> str:
    """Opens, sends a request line and trickles header lines until the daemon cuts it off."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return "refused"
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        for n in range(400):
            if stop.is_set():
                return "still connected"
            await asyncio.sleep(0.1)
            writer.write(b"X-Slow-%d: 1\r\n" % n)
            await writer.drain()
            if reader.at_eof():
                return "evicted"
        return "still connected"
    except ConnectionError:
        return "evicted"
    finally:
        writer.close()


async def test_hundreds_of_slow_clients_are_evicted_while_normal_clients_are_served(daemon):
    text = await metrics_text(daemon.port)
    header_before = metric(text, "imagevault_connections_evicted_total", "header_timeout")
    slow_before = metric(text, "imagevault_connections_evicted_total", "slow_upload")
    stop = asyncio.Event()
    headers_task = asyncio.gather(*(slow_header_client(daemon.port, stop) for _ in range(300)))
    # As many trickling uploads as there are upload slots: without a rate floor, every other
    # upload would get 503 overloaded for as long as they keep trickling.
    bodies_task = asyncio.gather(*(slow_body_client(daemon) for _ in range(8)))
    served = []
    uploads = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.sleep(0.5)  # all of them connected and trickling
        for _ in range(10):
            async with session.get(f"{daemon.url}/healthz") as response:
                served.append(response.status)
            await asyncio.sleep(0.05)
        # Meanwhile uploads are tried until one gets a slot: the trickling ones lose theirs.
        for _ in range(100):
            uploads.append(await upload(session, daemon, jpeg(bytes(20_000))))
            if uploads[-1] == 201:
                break
            await asyncio.sleep(0.2)
        outcomes = await asyncio.wait_for(headers_task, 60)
        bodies = await asyncio.wait_for(bodies_task, 60)
        stop.set()
        # ... and afterwards every slot is free again.
        after = await asyncio.gather(*(upload(session, daemon, jpeg(bytes(10_000))) for _ in range(8)))
    assert served == [200] * 10
    assert uploads[-1] == 201 and set(uploads) <= {201, 503}
    assert outcomes.count("evicted") == 300, {o: outcomes.count(o) for o in set(outcomes)}
    for raw in bodies:  # 408 request_timeout, or a reset if the client's bytes were still in flight
        if raw:
            status, _, body = parse_response(raw)
            assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
    assert sum(1 for raw in bodies if raw) >= 1
    assert after == [201] * 8
    text = await metrics_text(daemon.port)
    assert metric(text, "imagevault_connections_evicted_total", "header_timeout") >= header_before + 300
    assert metric(text, "imagevault_connections_evicted_total", "slow_upload") >= slow_before + 8
    assert metric(text, "imagevault_uploads_in_flight") == 0


async def test_past_max_connections_a_new_connection_gets_503_and_the_open_ones_carry_on(tmp_path_factory):
    daemon, _ = start_daemon(tmp_path_factory, max_connections="20", header_timeout="60", keepalive_timeout="60")
    held = []
    try:
        for _ in range(20):
            held.append(await asyncio.open_connection(HOST, daemon.port))
        await asyncio.sleep(0.2)
        refused = await asyncio.gather(*(
            exchange(daemon.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(5)
        ))
        for raw in refused:
            status, headers, body = parse_response(raw)
            assert status == 503
            assert json.loads(body)["error"]["code"] == "overloaded"
            assert int(headers["retry-after"]) > 0
        for reader, writer in held:  # every connection that was open is served as usual
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        reader, writer = held.pop()
        writer.close()
        await asyncio.sleep(0.3)
        text = await metrics_text(daemon.port)  # a slot was freed: this one is admitted
        assert metric(text, "imagevault_connections_evicted_total", "connection_cap") == 5
        assert metric(text, "imagevault_connections_open") == 20  # 19 held + this one
    finally:
        for _, writer in held:
            writer.close()
        daemon.stop()
