"""The disk ceiling: a minimal aiohttp server that stores uploads durably and does nothing else.

Same stack as the daemon (aiohttp on uvloop, one process, the same read buffer), same request shape (multipart with a
``metadata`` JSON part first, then ``file``), same durability before the 201 (write the temp
file in 1 MiB batches from an executor thread, fsync, rename into place, fsync the directory) —
but no authentication, no crypto, no hashing, no index. What imagevault reaches as a fraction
of this is what its own work costs; a perfect implementation could approach 1.0 here.

    POST /v1/images        -> 201 {"id", "size"}
    GET  /v1/images/{id}   -> the stored bytes (sendfile; Range not supported)
    DELETE /v1/images/{id} -> 200

    python -m bench.sink --listen 127.0.0.1:9000 --dir /tmp/sink [--digests 2]

``--digests N`` makes it also compute N SHA-256 digests of every upload, on the writer thread
(a diagnostic ceiling, not a goal): docs/api.md asks imagevault for the digest of the stored bytes
and, when metadata stripping changed them (as for every benchmark JPEG, which carries GPS),
of the received bytes too. SHA-256 runs at ~1.4 GB/s per core here, so the two cost more CPU
than the whole bare sink does; this sink shows what could be approached with that work done.

``--aes-gcm`` also encrypts every upload with AES-256-GCM in 256 KiB chunks (the blob format's
default chunk, a fresh 96-bit nonce each, a 16-byte tag appended) into one reused buffer and
stores the ciphertext: with ``--digests 2`` this is all the work imagevault's upload *must* do
(the ceiling its upload CPU per GB is held to), and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

READ_PIECE = 1024 * 1024  # as vault/api/handlers/images.py
READ_BUFSIZE = 512 * 1024  # as vault/api/app.py: the same transport settings as the daemon
WRITE_BATCH = 1 << 20  # as vault/store/backends/fs.py
CHUNK = 1 << 18  # as vault/store/format.py DEFAULT_CHUNK_EXP (256 KiB)
TAG = 16

DIR_KEY = web.AppKey("dir", Path)
DIGESTS_KEY = web.AppKey("digests", int)
AES_KEY = web.AppKey("aes_gcm", bool)


class _Encryptor:
    """AES-256-GCM over 256 KiB chunks into one buffer reused for every batch of an upload."""

    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(256))
        self._prefix = secrets.token_bytes(4)
        self._index = 0
        self._out = bytearray()

    def seal(self, data: bytearray) -> memoryview:
        chunks = -(-len(data) // CHUNK)
        size = len(data) + chunks * TAG
        if len(self._out) < size:
            self._out = bytearray(size)
        out, view = memoryview(self._out), memoryview(data)
        pos = 0
        for first in range(0, len(data), CHUNK):
            piece = view[first:first + CHUNK]
            nonce = self._prefix + self._index.to_bytes(8, "big")
            self._index += 1
            self._aead.encrypt_into(nonce, piece, None, out[pos:pos + len(piece) + TAG])
            pos += len(piece) + TAG
        return out[:pos]


def _write_all(fd: int, data: bytearray, digests: list | None = None, encryptor: _Encryptor | None = None) -> None:
    for digest in digests or ():
        digest.update(data)
    view = memoryview(data) if encryptor is None else encryptor.seal(data)
    while view:
        view = view[os.write(fd, view):]


def _install(fd: int, tmp: Path, target: Path) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def upload(request: web.Request) -> web.Response:
    root = request.app[DIR_KEY]
    loop = asyncio.get_running_loop()
    reader = await request.multipart()
    part = await reader.next()
    if part is None or part.name != "metadata":
        raise web.HTTPBadRequest(text="metadata part first")
    json.loads(await part.read())  # parsed, as the daemon does (and then ignored)
    part = await reader.next()
    if part is None or part.name != "file":
        raise web.HTTPBadRequest(text="file part second")
    digests = [hashlib.sha256() for _ in range(request.app[DIGESTS_KEY])]
    encryptor = _Encryptor() if request.app[AES_KEY] else None
    blob_id = secrets.token_hex(16)
    tmp = root / "tmp" / f"{blob_id}.tmp"
    fd = await loop.run_in_executor(None, os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    buffer = bytearray()
    try:
        while piece := await part.read_chunk(READ_PIECE):
            size += len(piece)
            buffer += piece
            if len(buffer) >= WRITE_BATCH:
                batch, buffer = buffer, bytearray()
                await loop.run_in_executor(None, _write_all, fd, batch, digests, encryptor)
        if buffer:
            await loop.run_in_executor(None, _write_all, fd, buffer, digests, encryptor)
        await loop.run_in_executor(None, _install, fd, tmp, root / "blobs" / blob_id)
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        tmp.unlink(missing_ok=True)
        raise
    body = {"id": blob_id, "size": size}
    if digests:
        body["sha256"] = digests[0].hexdigest()
    return web.json_response(body, status=201)


def _blob_path(request: web.Request) -> Path:
    blob_id = request.match_info["id"]
    if len(blob_id) != 32 or any(c not in "0123456789abcdef" for c in blob_id):
        raise web.HTTPNotFound()
    return request.app[DIR_KEY] / "blobs" / blob_id


async def download(request: web.Request) -> web.StreamResponse:
    path = _blob_path(request)
    if not path.exists():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": "image/jpeg"})


async def delete(request: web.Request) -> web.Response:
    _blob_path(request).unlink(missing_ok=True)
    return web.json_response({"shredded": True})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_app(root: Path, digests: int = 0, aes_gcm: bool = False) -> web.Application:
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    app = web.Application(client_max_size=1024 * 1024, handler_args={"read_bufsize": READ_BUFSIZE})
    app[DIR_KEY] = root
    app[DIGESTS_KEY] = digests
    app[AES_KEY] = aes_gcm
    app.router.add_post("/v1/images", upload)
    app.router.add_get("/v1/images/{id}", download)
    app.router.add_delete("/v1/images/{id}", delete)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="durable upload sink (the disk ceiling)")
    parser.add_argument("--listen", default="127.0.0.1:9000")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--digests", type=int, default=0, help="SHA-256 digests to compute per upload")
    parser.add_argument("--aes-gcm", action="store_true", help="also encrypt every upload (AES-256-GCM, 256 KiB chunks)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    import uvloop

    uvloop.install()
    web.run_app(create_app(Path(args.dir), args.digests, args.aes_gcm), host=host, port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()
