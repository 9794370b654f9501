"""``/v1/uploads``: resumable uploads, the tus 1.0.0 protocol (https://tus.io/protocols/resumable-upload).

Core protocol plus the creation, creation-with-upload, expiration, termination and checksum
(``sha256``) extensions. This module speaks the protocol's headers; the state machine is
``vault/services/uploads.py``. Every response under ``/v1/uploads`` carries ``Tus-Resumable``
(``tus_headers``, an ``on_response_prepare`` hook), error answers included, which are the API's
error JSON (tus clients ignore bodies).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from email.utils import format_datetime

from aiohttp import ClientConnectionError, ClientPayloadError, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from vault.api.handlers.common import principal_of, vault_of
from vault.audit.chain import AuditAction
from vault.auth import Action
from vault.config import Config
from vault.errors import (
    ClientDisconnected, InvalidRequest, RequestTimeout, TooLarge, UnsupportedMediaType, UnsupportedTusVersion,
)
from vault.metadata import parse_metadata
from vault.services.uploads import Chunk, UploadRequest, UploadStatus

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,expiration,termination,checksum"
# sha256, and sha1 because it is what tus clients send (tuspy knows no other): a checksum of a
# chunk in transit guards against corruption, not against an adversary (TLS does that).
CHECKSUM_ALGORITHMS = {"sha256": 32, "sha1": 20}
OFFSET_STREAM = "application/offset+octet-stream"
UPLOADS_PATH = "/v1/uploads"
# The Upload-Metadata keys this server reads; others are accepted and ignored (tus clients add
# their own, such as "filename").
METADATA_KEY = "metadata"
CONTENT_TYPE_KEY = "content_type"
# What one read of a PATCH body may return (aiohttp buffers up to twice READ_BUFSIZE).
_DIGITS = re.compile(r"[0-9]{1,18}")
_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII without space and comma


def _require_tus(request: web.Request) -> None:
    if request.headers.get("Tus-Resumable", "").strip() != TUS_VERSION:
        raise UnsupportedTusVersion()


def _integer(request: web.Request, name: str) -> int:
    value = request.headers.get(name)
    if value is None:
        raise InvalidRequest(f"{name} is required")
    value = value.strip()
    if not _DIGITS.fullmatch(value):
        raise InvalidRequest(f"{name} must be a non-negative integer")
    return int(value)


def parse_upload_metadata(header: str) -> dict[str, bytes]:
    """``key base64,key base64,key``: the creation extension's Upload-Metadata (a key may come
    without a value; keys are unique)."""
    pairs: dict[str, bytes] = {}
    if not header.strip():
        return pairs
    for item in header.split(","):
        parts = item.strip().split(" ")
        if len(parts) > 2 or not _KEY.fullmatch(parts[0]) or parts[0] in pairs:
            raise InvalidRequest("Upload-Metadata is malformed")
        try:
            pairs[parts[0]] = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
        except (binascii.Error, ValueError):
            raise InvalidRequest("Upload-Metadata values must be base64") from None
    return pairs


def parse_checksum(header: str) -> tuple[str, bytes]:
    """``<algorithm> <base64 digest>``, the checksum extension's Upload-Checksum."""
    algorithm, _, value = header.strip().partition(" ")
    algorithm = algorithm.lower()
    size = CHECKSUM_ALGORITHMS.get(algorithm)
    if size is None:
        raise InvalidRequest(f"Upload-Checksum: supported algorithms are {','.join(CHECKSUM_ALGORITHMS)}")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != size:
        raise InvalidRequest(f"Upload-Checksum must carry a base64 {algorithm} digest")
    return algorithm, digest


def _request_of(request: web.Request, config: Config) -> UploadRequest:
    """The creation's length, metadata and content type, validated before any byte is read."""
    if "Upload-Defer-Length" in request.headers:
        raise InvalidRequest("Upload-Defer-Length is not supported: send Upload-Length")
    length = _integer(request, "Upload-Length")
    pairs = parse_upload_metadata(request.headers.get("Upload-Metadata", ""))
    raw = pairs.get(METADATA_KEY)
    if not raw:
        raise InvalidRequest("Upload-Metadata must carry 'metadata', the record's metadata JSON in base64")
    if len(raw) > config.max_metadata_bytes:
        raise TooLarge(f"metadata exceeds {config.max_metadata_bytes} bytes")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequest("metadata is not valid JSON") from exc
    metadata = parse_metadata(document)
    try:
        content_type = pairs.get(CONTENT_TYPE_KEY, b"").decode("ascii")
    except UnicodeDecodeError:
        raise UnsupportedMediaType("content_type must be an ASCII media type") from None
    if not content_type:
        raise InvalidRequest("Upload-Metadata must carry 'content_type', the image's media type in base64")
    return UploadRequest(length, metadata, raw, content_type)


async def _body(request: web.Request, config: Config) -> AsyncIterator[bytes]:
    """A PATCH body as it arrives: each read bounded in time, the whole at a minimum rate
    (as for POST /v1/images), a lost connection reported as ``ClientDisconnected``."""
    loop = asyncio.get_running_loop()
    started, counted = loop.time(), 0
    while True:
        try:
            async with asyncio.timeout(config.body_read_timeout):
                piece = await request.content.readany()
        except TimeoutError as exc:
            raise RequestTimeout() from exc
        except (ConnectionError, ClientConnectionError, ClientPayloadError) as exc:
            raise ClientDisconnected() from exc
        except HttpProcessingError as exc:
            raise InvalidRequest("malformed request body") from exc
        if not piece:
            return
        if config.min_upload_rate > 0:
            counted += len(piece)
            elapsed = loop.time() - started
            if elapsed >= config.upload_rate_window:
                if counted < config.min_upload_rate * elapsed:
                    raise RequestTimeout("upload slower than the minimum rate; resume on a better connection")
                started, counted = loop.time(), 0
        yield piece


def _chunk(request: web.Request, config: Config, offset: int) -> Chunk:
    if request.content_length is None:
        raise InvalidRequest("a PATCH needs Content-Length")
    checksum = request.headers.get("Upload-Checksum")
    return Chunk(offset, request.content_length, _body(request, config),
                 None if checksum is None else parse_checksum(checksum))


def _progress_headers(status: UploadStatus) -> dict[str, str]:
    headers = {"Upload-Offset": str(status.offset), "Upload-Expires": format_datetime(status.expires_at, usegmt=True)}
    if status.record_id is not None:
        headers["Content-Location"] = f"/v1/images/{status.record_id}"
    return headers


def _is_offset_stream(request: web.Request) -> bool:
    return request.headers.get(hdrs.CONTENT_TYPE, "").split(";")[0].strip().lower() == OFFSET_STREAM


async def options_uploads(request: web.Request) -> web.Response:
    """Discovery: what this server supports (no Tus-Resumable needed)."""
    return web.Response(status=204, headers={
        "Tus-Version": TUS_VERSION, "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(vault_of(request).config.max_image_bytes), "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    })


async def create_upload(request: web.Request) -> web.Response:
    vault = vault_of(request)
    principal = principal_of(request)
    await vault.refuse_unless(principal, Action.UPLOAD, AuditAction.UPLOAD_START)  # before anything is read
    _require_tus(request)
    with_body = bool(request.content_length) or request.headers.get(hdrs.TRANSFER_ENCODING) is not None
    if with_body and not _is_offset_stream(request):
        raise UnsupportedMediaType(f"a creation with upload sends Content-Type: {OFFSET_STREAM}")
    status = await vault.start_upload(principal, _request_of(request, vault.config))
    if with_body:  # creation-with-upload: the body is the first chunk
        status = await vault.append_upload(principal, status.id, _chunk(request, vault.config, 0))
    headers = {"Location": f"{UPLOADS_PATH}/{status.id}", **_progress_headers(status)}
    return web.Response(status=201, headers=headers)


async def head_upload(request: web.Request) -> web.Response:
    _require_tus(request)
    status = await vault_of(request).upload_status(principal_of(request), request.match_info["id"])
    headers = {"Upload-Length": str(status.length), "Cache-Control": "no-store", **_progress_headers(status)}
    if status.metadata_json is not None:
        headers["Upload-Metadata"] = (f"{METADATA_KEY} {base64.b64encode(status.metadata_json).decode()},"
                                      f"{CONTENT_TYPE_KEY} {base64.b64encode(status.content_type.encode()).decode()}")
    return web.Response(status=200, headers=headers)


async def patch_upload(request: web.Request) -> web.Response:
    vault = vault_of(request)
    principal = principal_of(request)
    await vault.refuse_unless(principal, Action.UPLOAD, AuditAction.CREATE)  # before the body is read
    _require_tus(request)
    if not _is_offset_stream(request):
        raise UnsupportedMediaType(f"a PATCH sends Content-Type: {OFFSET_STREAM}")
    offset = _integer(request, "Upload-Offset")
    status = await vault.append_upload(principal, request.match_info["id"], _chunk(request, vault.config, offset))
    return web.Response(status=204, headers=_progress_headers(status))


async def delete_upload(request: web.Request) -> web.Response:
    _require_tus(request)
    await vault_of(request).terminate_upload(principal_of(request), request.match_info["id"])
    return web.Response(status=204)


async def tus_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer under /v1/uploads says which protocol it speaks."""
    if request.path == UPLOADS_PATH or request.path.startswith(UPLOADS_PATH + "/"):
        response.headers["Tus-Resumable"] = TUS_VERSION
        if response.status == UnsupportedTusVersion.status:
            response.headers["Tus-Version"] = TUS_VERSION
