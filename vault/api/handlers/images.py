"""``/v1/images``: upload (streamed multipart), download with ranges, metadata, shred."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Callable

from aiohttp import BodyPartReader, ClientConnectionError, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from vault.api.handlers.common import (
    json_response, parse_flag, principal_of, read_json, vault_of,
)
from vault.audit.chain import AuditAction
from vault.audit.hooks import append_event
from vault.auth import Action, Principal, Role
from vault.config import Config
from vault.errors import (
    ClientDisconnected,
    InvalidRequest,
    MissingPart,
    NotDeidentifiable,
    RangeNotSatisfiable,
    RequestTimeout,
    TooLarge,
)
from vault.idempotency import KEY_HEADER, REPLAYED_HEADER, parse_idempotency_key
from vault.ingest.deid import deidentify
from vault.metadata import Metadata, Record, parse_metadata
from vault.service import ImageHandle

log = logging.getLogger(__name__)
# What one read of the file part may return: up to what aiohttp buffers (api/app.py READ_BUFSIZE).
READ_PIECE = 1024 * 1024
# Bytes authenticated before the status line is sent: a corrupt blob of up to this size
# gets a clean 500 integrity_error; past it, a failure aborts the connection mid-body.
VERIFY_AHEAD = 1024 * 1024

_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
# Byte positions past any image: longer digit strings are compared as this, never converted
# (int() of thousands of digits is refused by Python and would be a 500).
_BEYOND = 1 << 63
_MALFORMED = (ValueError, AssertionError, RuntimeError, UnicodeDecodeError, LookupError, HttpProcessingError)


class _MalformedMultipart(InvalidRequest):
    default_message = "malformed multipart body"


async def _next_part(reader: MultipartReader) -> BodyPartReader | None:
    try:
        part = await reader.next()
    except _MALFORMED as exc:
        raise _MalformedMultipart() from exc
    if part is not None and not isinstance(part, BodyPartReader):
        raise _MalformedMultipart("nested multipart parts are not accepted")
    return part


async def _read_piece(part: BodyPartReader, size: int, timeout: float) -> bytes:
    """One read of a part, bounded in time: a client that stops sending mid-body (slow-loris)
    is cut off instead of holding an upload slot, a temp file and a DEK forever."""
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for wraps every read in a new task,
        # which showed up in upload profiles (several reads per MiB, per upload).
        async with asyncio.timeout(timeout):
            return await part.read_chunk(size)
    except TimeoutError as exc:
        raise RequestTimeout() from exc
    except _MALFORMED as exc:
        raise _MalformedMultipart() from exc
    except (ConnectionError, ClientConnectionError) as exc:
        raise ClientDisconnected() from exc


async def _metadata_of(part: BodyPartReader, config: Config) -> Metadata:
    raw = bytearray()
    while piece := await _read_piece(part, 65536, config.body_read_timeout):
        raw += piece
        if len(raw) > config.max_metadata_bytes:
            raise TooLarge(f"metadata part exceeds {config.max_metadata_bytes} bytes")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequest("metadata part is not valid JSON") from exc
    return parse_metadata(document)


async def _file_pieces(
    reader: MultipartReader, part: BodyPartReader, config: Config, metadata_after: asyncio.Future[Metadata] | None = None
) -> AsyncIterator[bytes]:
    """The file part's bytes; ends only once the closing boundary has been seen.

    aiohttp ends a part quietly when the body stops early, so a request cut short would look
    like a complete, shorter image. The final check makes truncation an error *before* the
    service commits anything. When the file came first (``metadata_after``), the metadata
    part that follows it is read and validated here, also before anything is committed.
    """
    rate = _RateFloor(config.min_upload_rate, config.upload_rate_window)
    while True:
        piece = await _read_piece(part, READ_PIECE, config.body_read_timeout)
        if not piece:
            break
        rate.count(len(piece))
        yield piece
    if metadata_after is not None:
        following = await _next_part(reader)
        if following is None or following.name != "metadata":
            raise MissingPart()
        metadata_after.set_result(await _metadata_of(following, config))
    if await _next_part(reader) is not None:
        raise _MalformedMultipart("unexpected part after 'metadata' and 'file'")


class _RateFloor:
    """An upload must average at least ``min_rate`` bytes/s over every ``window`` seconds.

    A single read is bounded by ``body_read_timeout``; this bounds the whole body, so a client
    trickling a few bytes just often enough cannot hold an upload slot (and a DEK and a
    temporary blob) for hours. Clinic Wi-Fi at its worst still moves far more than the floor."""

    def __init__(self, min_rate: float, window: float) -> None:
        self._min_rate = min_rate
        self._window = window
        self._started = asyncio.get_running_loop().time()
        self._bytes = 0

    def count(self, size: int) -> None:
        if self._min_rate <= 0:
            return
        self._bytes += size
        now = asyncio.get_running_loop().time()
        elapsed = now - self._started
        if elapsed >= self._window:
            if self._bytes < self._min_rate * elapsed:
                raise RequestTimeout("upload slower than the minimum rate; retry on a better connection")
            self._started, self._bytes = now, 0


async def upload_image(request: web.Request) -> web.Response:
    """Metadata first is the contract (it is validated before a byte of the image is read);
    file first is accepted too, for generic multipart clients: the image is then sealed into a
    temporary blob while it streams and discarded if the metadata after it is invalid."""
    vault = vault_of(request)
    config = vault.config
    principal = principal_of(request)
    await vault.refuse_unless(principal, Action.UPLOAD, AuditAction.CREATE)  # before reading the body
    idempotency_key = parse_idempotency_key(request.headers.get(KEY_HEADER))
    # The raw header, not request.content_type: that goes through the email package
    # (4% of the event loop under upload load); only the type prefix matters here.
    if not request.headers.get(hdrs.CONTENT_TYPE, "").lstrip().lower().startswith("multipart/"):
        raise MissingPart()
    declared = request.content_length
    # Metadata part (≤ max_metadata_bytes) + multipart framing + the image itself.
    if declared is not None and declared > config.max_image_bytes + config.max_metadata_bytes + 65536:
        raise TooLarge(f"image exceeds the limit of {config.max_image_bytes} bytes")
    try:
        reader = await request.multipart()
    except _MALFORMED as exc:
        raise _MalformedMultipart() from exc
    part = await _next_part(reader)
    if part is None or part.name not in ("metadata", "file"):
        raise MissingPart()
    if part.name == "metadata":
        metadata: Metadata | asyncio.Future[Metadata] = await _metadata_of(part, config)
        part = await _next_part(reader)
        if part is None or part.name != "file":
            raise MissingPart()
        pieces = _file_pieces(reader, part, config)
    else:
        metadata = asyncio.get_running_loop().create_future()
        pieces = _file_pieces(reader, part, config, metadata)
    content_type = part.headers.get(hdrs.CONTENT_TYPE, "")
    record = await vault.create_image(principal, metadata, content_type, pieces, idempotency_key=idempotency_key)
    body = record.to_json(include_personal=principal.sees_personal_data)
    headers = {"Location": f"/v1/images/{record.id}"}
    if record.replayed:
        headers[REPLAYED_HEADER] = "true"
    return json_response(body, status=201, headers=headers)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as [start, end) or None for the whole image; 416 otherwise."""
    match = _RANGE.match(header.strip())
    if match is None:
        raise RangeNotSatisfiable(size, "only a single bytes=a-b range is supported")
    first, last = match.group(1), match.group(2)
    if not first and not last:
        raise RangeNotSatisfiable(size)
    if not first:  # suffix range: the last N bytes
        length = _position(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - length), size
    start = _position(first)
    end = size if not last else _position(last) + 1
    if last and _position(last) < start:
        raise RangeNotSatisfiable(size)
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(end, size)


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _BEYOND


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    candidates = [c.strip() for c in header.split(",")]
    return any(c in (etag, "W/" + etag) for c in candidates)


async def get_image(request: web.Request) -> web.StreamResponse:
    vault = vault_of(request)
    principal = principal_of(request)
    handle = await vault.open_image(principal, request.match_info["id"])
    if principal.role is Role.RESEARCHER:
        return await _deidentified_image(request, principal, handle)
    record = handle.record
    etag = f'"{record.sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Repr-Digest": "sha-256=:" + base64.b64encode(bytes.fromhex(record.sha256)).decode() + ":",
        **_image_headers(record),
    }
    if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return web.Response(status=304, headers=headers)
    status = 200
    start, end = 0, record.size
    range_header = request.headers.get(hdrs.RANGE)
    if_range = request.headers.get(hdrs.IF_RANGE)
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        parsed = _parse_range(range_header, record.size)
        if parsed is not None and parsed != (0, record.size):
            status = 206
            start, end = parsed
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{record.size}"
    if status == 200:
        headers["Content-Digest"] = headers["Repr-Digest"]
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = record.content_type
    response.content_length = end - start
    if request.method == "HEAD":
        await response.prepare(request)
        return response
    return await _send(request, response, handle.stream(start, end), handle.release)


async def get_thumbnail(request: web.Request) -> web.StreamResponse:
    return await _rendition(request, "thumbnail")


async def get_preview(request: web.Request) -> web.StreamResponse:
    return await _rendition(request, "preview")


async def _rendition(request: web.Request, kind: str) -> web.StreamResponse:
    """A record's thumbnail or preview (docs/api.md): WebP without metadata, the same for every
    role that may see the record (a researcher's record must be research-consented)."""
    record_id = request.match_info["id"]
    handle = await vault_of(request).open_rendition(principal_of(request), record_id, kind,
                                                    with_data=request.method != "HEAD")
    etag = f'"{handle.etag}"'
    headers = {
        "ETag": etag,
        "Cache-Control": "private, no-store",
        "Content-Disposition": f'inline; filename="IMG-{record_id[-6:]}_{kind}.webp"',
        "X-Content-Type-Options": "nosniff",
    }
    if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return web.Response(status=304, headers=headers)
    if request.method == "HEAD":
        response = web.StreamResponse(headers=headers)
        response.content_type = handle.content_type
        response.content_length = handle.size
        await response.prepare(request)
        return response
    return web.Response(body=handle.data, content_type=handle.content_type, headers=headers)


def _image_headers(record: Record) -> dict[str, str]:
    """The headers every image response carries, whoever asks."""
    return {
        "Cache-Control": "private, no-store",
        "Content-Disposition": f'attachment; filename="{record.display_name}.{record.extension}"',
        "X-Content-Type-Options": "nosniff",
    }


async def _deidentified_image(request: web.Request, principal: Principal, handle: ImageHandle) -> web.StreamResponse:
    """What a researcher gets: the de-identified copy (docs/api.md, GET /v1/images/{id}).

    Nothing that links it to the stored, identified file: no ETag or digest of the stored bytes
    (only of the copy, when it is produced whole before sending: DICOM), no stored size, and
    no ranges, since byte offsets into a copy made while streaming are not stable. ``Range``
    is ignored (RFC 9110 allows that): the answer is 200 with the whole copy."""
    record = handle.record
    try:
        copy = await deidentify(record.content_type, record.size, handle.stream, record.id.encode())
    except NotDeidentifiable as exc:
        log.info("record %s not served to a researcher: %s", record.id, exc.code)
        await append_event(vault_of(request).audit, principal, AuditAction.READ, [record.id], exc.code)
        raise
    headers = {"Accept-Ranges": "none", **_image_headers(record)}
    if copy.sha256 is not None:
        etag = f'"{copy.sha256}"'
        digest = "sha-256=:" + base64.b64encode(bytes.fromhex(copy.sha256)).decode() + ":"
        headers.update({"ETag": etag, "Repr-Digest": digest, "Content-Digest": digest})
        if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
        if if_none_match is not None and _etag_matches(if_none_match, etag):
            await copy.chunks.aclose()
            return web.Response(status=304, headers=headers)
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = record.content_type
    if copy.size is not None:
        response.content_length = copy.size
    if request.method == "HEAD":
        await copy.chunks.aclose()
        await response.prepare(request)
        return response
    try:
        return await _send(request, response, copy.chunks)
    except NotDeidentifiable as exc:  # found before the status line: a clean 403, audited
        await append_event(vault_of(request).audit, principal, AuditAction.READ, [record.id], exc.code)
        raise


async def _send(
    request: web.Request, response: web.StreamResponse, stream: AsyncIterator[bytes],
    release: Callable[[object], None] | None = None,
) -> web.StreamResponse:
    """Stream a body, first holding up to VERIFY_AHEAD bytes before committing to a status
    line: a failure within them gets a clean error answer. A failure after the headers have
    gone (an integrity error, a copy that cannot be finished) closes the connection: the client
    sees a truncated body, never a complete-looking one.

    ``release`` (downloads): pieces are handed back for reuse once the transport's write buffer
    is empty, i.e. once the kernel has every byte of them and nothing here still refers to them."""
    sent: list[bytes] = []

    def release_sent() -> bool:
        transport = request.transport
        if transport is None or transport.get_write_buffer_size() != 0:
            return False
        for done in sent:
            assert release is not None
            release(done)
        sent.clear()
        return True

    async def write(piece: bytes) -> None:
        # Checked before the write too: the pieces of the previous write have usually drained
        # while the next batch was read and decrypted.
        if release is not None and sent:
            release_sent()
        await response.write(piece)
        if release is None:
            return
        sent.append(piece)
        if not release_sent() and len(sent) > 4:
            # A slow client: forget (not release) the oldest; the transport frees it when sent.
            # Never a list of every piece of a 2 GiB download.
            del sent[0]

    ahead: list[bytes] = []
    buffered = 0
    exhausted = False
    while buffered < VERIFY_AHEAD:
        try:
            piece = await stream.__anext__()
        except StopAsyncIteration:
            exhausted = True
            break
        ahead.append(piece)
        buffered += len(piece)
    await response.prepare(request)
    for piece in ahead:
        await write(piece)
    ahead.clear()
    while not exhausted:
        try:
            piece = await stream.__anext__()
        except StopAsyncIteration:
            break
        except Exception as exc:
            # Headers are gone; the only honest signal left is an incomplete body.
            if request.transport is not None:
                request.transport.close()
            log.warning("download of %s aborted after the headers were sent (%s)", request.match_info.get("id"),
                        getattr(exc, "code", exc.__class__.__name__))
            raise ConnectionResetError("failure after headers were sent") from None
        await write(piece)
        del piece  # not held across the next read: a piece is released only when nothing refers to it
    await response.write_eof()
    return response


async def get_metadata(request: web.Request) -> web.Response:
    principal = principal_of(request)
    record = await vault_of(request).get_record(principal, request.match_info["id"])
    return json_response(record.to_json(include_personal=principal.sees_personal_data))


async def patch_metadata(request: web.Request) -> web.Response:
    principal = principal_of(request)
    await vault_of(request).refuse_unless(principal, Action.UPDATE, AuditAction.UPDATE)
    patch = await read_json(request)
    record = await vault_of(request).update_metadata(principal, request.match_info["id"], patch)
    return json_response(record.to_json(include_personal=principal.sees_personal_data))


async def delete_image(request: web.Request) -> web.Response:
    principal = principal_of(request)
    reason = request.query.get("reason")
    if reason is not None and len(reason) > 1024:
        raise InvalidRequest("reason must be at most 1024 characters")
    override = parse_flag(request.query.get("override"), "override")
    result = await vault_of(request).shred_record(
        principal, request.match_info["id"], reason=reason, override=override
    )
    return json_response({"id": result.id, "shredded": result.shredded})

