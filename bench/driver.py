"""The upload/download driver: N concurrent asyncio clients moving the same images to any target.

Throughput comparisons between targets go through this driver only, so the ratios are apples
to apples: one aiohttp ``ClientSession`` (one connection per client), the same image bytes in
the same order, the same concurrency, the same accounting. What differs is only what a target
needs on the wire:

- ``VaultTarget``: ``POST /v1/images`` multipart (``metadata`` JSON part, then ``file``), bearer
  token; ``GET /v1/images/{id}`` (optionally a ``Range``); ``DELETE``.
- ``TusTarget``: the same daemon through ``/v1/uploads`` (tus): a creation, then PATCHes.
- ``SinkTarget``: the same multipart POST to ``bench/sink.py`` (the disk ceiling).
- ``S3Target``: ``PUT /bucket/key`` of the raw bytes, SigV4-signed (``bench/s3.py``).

MB/s is payload bytes (image bytes, not framing) over the wall time of the phase, in 10^6
bytes per second. Every request's latency is recorded with its start time, so callers can
compute percentiles per phase and over time.

    python -m bench.driver vault --url http://127.0.0.1:8080 --token ivt_... --concurrency 16 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.s3 import S3Client  # noqa: E402

BODY_SITES = (
    "scalp", "face", "neck", "chest", "abdomen", "upper_back", "lower_back", "left_upper_arm",
    "right_upper_arm", "left_forearm", "right_forearm", "left_hand", "right_hand", "left_thigh",
    "right_thigh", "left_lower_leg", "right_lower_leg", "left_foot", "right_foot",
)


def patient_id(n: int) -> str:
    """A synthetic NHS-number-shaped identifier (never a real one: the 000 prefix is unused)."""
    return f"000 {n // 10000 % 1000:03d} {n % 10000:04d}"


def clinical_metadata(
    *, patient: int, modality: str = "total_body", session_id: str | None = None, lesion_id: str | None = None,
    index: int = 0, retention: dict[str, str] | None = None, captured_at: datetime | None = None,
) -> dict[str, Any]:
    """Metadata as a capture app sends it (docs/api.md "Record metadata")."""
    captured = (captured_at or datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)) + timedelta(seconds=index)
    meta: dict[str, Any] = {
        "patient_id": patient_id(patient),
        "captured_at": captured.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "modality": modality,
        "body_site": BODY_SITES[index % len(BODY_SITES)],
        "device": "VECTRA-WB360" if modality == "total_body" else "DermLite-DL5",
        "tags": ["bench"],
        "consent": {"care": True, "research": index % 3 == 0, "method": "written"},
    }
    if session_id:
        meta["session_id"] = session_id
    if lesion_id:
        meta["lesion_id"] = lesion_id
    if retention:
        meta["retention"] = retention
    return meta


def multipart_body(metadata: dict[str, Any], data: bytes, content_type: str = "image/jpeg") -> aiohttp.MultipartWriter:
    """``metadata`` part first, then ``file`` (docs/api.md); the image goes out as one bytes payload."""
    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append(json.dumps(metadata), {"Content-Type": "application/json"})
    part.set_content_disposition("form-data", name="metadata")
    part = writer.append(data, {"Content-Type": content_type})
    part.set_content_disposition("form-data", name="file", filename="image.jpg")
    return writer


async def _drain(response: aiohttp.ClientResponse) -> int:
    received = 0
    while piece := await response.content.readany():
        received += len(piece)
    return received


# targets ----------------------------------------------------------------------------------
class Target:
    name = "target"

    async def upload(self, session: aiohttp.ClientSession, data: bytes, metadata: dict[str, Any]) -> str:
        raise NotImplementedError

    async def download(self, session: aiohttp.ClientSession, key: str, byte_range: tuple[int, int] | None = None) -> int:
        raise NotImplementedError

    async def delete(self, session: aiohttp.ClientSession, key: str) -> None:
        raise NotImplementedError


class VaultTarget(Target):
    def __init__(self, url: str, token: str, name: str = "imagevault", dpo_token: str | None = None,
                 *, idempotency_keys: bool = False) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.name = name
        # Deleting records under retention (the driver's, after a round) takes a DPO override.
        self.delete_headers = {"Authorization": f"Bearer {dpo_token}"} if dpo_token else self.headers
        # Each upload with a fresh Idempotency-Key, as a client that retries safely sends it.
        self.idempotency_keys = idempotency_keys

    async def upload(self, session: aiohttp.ClientSession, data: bytes, metadata: dict[str, Any]) -> str:
        headers = self.headers
        if self.idempotency_keys:
            headers = {**headers, "Idempotency-Key": f'"{uuid.uuid4()}"'}
        async with session.post(f"{self.url}/v1/images", data=multipart_body(metadata, data), headers=headers) as response:
            body = await response.json()
            if response.status != 201:
                raise RuntimeError(f"{self.name} upload: HTTP {response.status} {body}")
            return body["id"]

    async def download(self, session: aiohttp.ClientSession, key: str, byte_range: tuple[int, int] | None = None) -> int:
        headers = dict(self.headers)
        if byte_range:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
        async with session.get(f"{self.url}/v1/images/{key}", headers=headers) as response:
            if response.status not in (200, 206):
                raise RuntimeError(f"{self.name} download: HTTP {response.status}")
            return await _drain(response)

    async def delete(self, session: aiohttp.ClientSession, key: str) -> None:
        params = {"override": "true", "reason": "benchmark cleanup"} if self.delete_headers is not self.headers else None
        async with session.delete(f"{self.url}/v1/images/{key}", headers=self.delete_headers, params=params) as response:
            await response.read()


class TusTarget(VaultTarget):
    """The same daemon through its resumable uploads (``/v1/uploads``, tus 1.0.0): a creation,
    then PATCHes of ``chunk`` bytes; the record id comes from the completing ``Content-Location``.
    Downloads and deletes are the ``VaultTarget``'s."""

    def __init__(self, url: str, token: str, name: str = "imagevault-tus", dpo_token: str | None = None,
                 chunk: int = 8 << 20) -> None:
        super().__init__(url, token, name, dpo_token)
        self.chunk = chunk

    async def upload(self, session: aiohttp.ClientSession, data: bytes, metadata: dict[str, Any]) -> str:
        encoded = base64.b64encode(json.dumps(metadata).encode()).decode()
        headers = {**self.headers, "Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)),
                   "Upload-Metadata": f"metadata {encoded},content_type {base64.b64encode(b'image/jpeg').decode()}"}
        async with session.post(f"{self.url}/v1/uploads", headers=headers) as response:
            await response.read()
            if response.status != 201:
                raise RuntimeError(f"{self.name} creation: HTTP {response.status}")
            location = response.headers["Location"]
        offset, record = 0, None
        while offset < len(data):
            piece = data if offset == 0 and len(data) <= self.chunk else data[offset:offset + self.chunk]
            async with session.patch(f"{self.url}{location}", data=piece, headers={
                **self.headers, "Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            }) as response:
                await response.read()
                if response.status != 204:
                    raise RuntimeError(f"{self.name} PATCH: HTTP {response.status}")
                offset = int(response.headers["Upload-Offset"])
                record = response.headers.get("Content-Location")
        if record is None:
            raise RuntimeError(f"{self.name}: the last PATCH named no record")
        return record.rsplit("/", 1)[1]


class SinkTarget(Target):
    def __init__(self, url: str, name: str = "disk-ceiling") -> None:
        self.url = url.rstrip("/")
        self.name = name

    async def upload(self, session: aiohttp.ClientSession, data: bytes, metadata: dict[str, Any]) -> str:
        async with session.post(f"{self.url}/v1/images", data=multipart_body(metadata, data)) as response:
            body = await response.json()
            if response.status != 201:
                raise RuntimeError(f"sink upload: HTTP {response.status}")
            return body["id"]

    async def download(self, session: aiohttp.ClientSession, key: str, byte_range: tuple[int, int] | None = None) -> int:
        async with session.get(f"{self.url}/v1/images/{key}") as response:
            if response.status != 200:
                raise RuntimeError(f"sink download: HTTP {response.status}")
            return await _drain(response)

    async def delete(self, session: aiohttp.ClientSession, key: str) -> None:
        async with session.delete(f"{self.url}/v1/images/{key}") as response:
            await response.read()


class S3Target(Target):
    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str,
                 region: str = "us-east-1", name: str = "seaweedfs-s3") -> None:
        self.client = S3Client(endpoint, access_key, secret_key, region)
        self.bucket = bucket
        self.name = name

    async def upload(self, session: aiohttp.ClientSession, data: bytes, metadata: dict[str, Any]) -> str:
        # The object key plays the record id; the metadata stays with the caller (plain S3 has
        # no index to put it in: the peer does strictly less work than imagevault here).
        key = uuid.uuid4().hex
        await self.client.put(session, f"/{self.bucket}/{key}", data)
        return key

    async def download(self, session: aiohttp.ClientSession, key: str, byte_range: tuple[int, int] | None = None) -> int:
        return await self.client.get(session, f"/{self.bucket}/{key}", byte_range)

    async def delete(self, session: aiohttp.ClientSession, key: str) -> None:
        await self.client.delete(session, f"/{self.bucket}/{key}")


# phases -----------------------------------------------------------------------------------
@dataclass
class Request:
    started: float  # seconds since the phase started
    seconds: float
    size: int
    ok: bool


@dataclass
class PhaseResult:
    target: str
    kind: str  # upload | download
    concurrency: int
    seconds: float
    payload_bytes: int
    requests: list[Request] = field(default_factory=list)
    keys: list[tuple[str, int]] = field(default_factory=list)  # uploads: (key, size) stored
    errors: list[str] = field(default_factory=list)

    @property
    def mb_s(self) -> float:
        return self.payload_bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def latency(self, quantile: float, size_range: tuple[int, int] | None = None) -> float | None:
        values = sorted(r.seconds for r in self.requests
                        if r.ok and (size_range is None or size_range[0] <= r.size < size_range[1]))
        if not values:
            return None
        return values[min(len(values) - 1, int(quantile * len(values)))]

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.requests if r.ok]
        return {
            "target": self.target, "kind": self.kind, "concurrency": self.concurrency,
            "requests": len(ok), "errors": len(self.errors), "seconds": round(self.seconds, 3),
            "payload_mb": round(self.payload_bytes / 1e6, 1), "mb_s": round(self.mb_s, 1),
            "p50_ms": _ms(self.latency(0.5)), "p99_ms": _ms(self.latency(0.99)),
            "mean_ms": _ms(statistics.fmean(r.seconds for r in ok)) if ok else None,
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
        timeout=aiohttp.ClientTimeout(total=900),
    )


async def _run_workers(concurrency: int, jobs: int | None, duration: float | None, work: Any) -> tuple[float, list[str]]:
    """``concurrency`` workers call ``work(job_index)`` until ``jobs`` are done or ``duration``
    has passed (no new request starts after it); returns the wall time and the errors."""
    if jobs is None and duration is None:
        raise ValueError("give jobs, duration or both")
    counter = iter(range(jobs if jobs is not None else 1 << 62))
    errors: list[str] = []
    started = time.perf_counter()
    deadline = None if duration is None else started + duration

    async def worker() -> None:
        for job in counter:
            if deadline is not None and time.perf_counter() >= deadline:
                return
            try:
                await work(job, started)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                errors.append(f"{exc.__class__.__name__}: {exc}"[:300])
                if len(errors) > 50:
                    raise RuntimeError(f"too many errors; first: {errors[0]}") from exc

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, errors


async def upload_phase(
    target: Target, images: Sequence[bytes], *, concurrency: int = 16, count: int | None = None,
    duration: float | None = None, metadata: Any = None, seed: int = 0,
) -> PhaseResult:
    """Upload ``images`` (cycled, in order) with ``concurrency`` clients: ``count`` uploads
    (default: each image once) or for ``duration`` seconds."""
    if count is None and duration is None:
        count = len(images)
    rng = random.Random(seed)
    patients = [rng.randrange(10**6) for _ in range(max(1, concurrency))]
    result = PhaseResult(target.name, "upload", concurrency, 0.0, 0)

    def meta_for(job: int) -> dict[str, Any]:
        if metadata is not None:
            return metadata(job)
        # One total-body session per client slot: same patient, same session id.
        slot = job % len(patients)
        return clinical_metadata(patient=patients[slot], session_id=f"TB-BENCH-{seed}-{slot}", index=job)

    async def work(job: int, started: float) -> None:
        data = images[job % len(images)]
        begin = time.perf_counter()
        ok = False
        try:
            key = await target.upload(session, data, meta_for(job))
            ok = True
        finally:
            end = time.perf_counter()
            result.requests.append(Request(begin - started, end - begin, len(data), ok))
        result.payload_bytes += len(data)
        result.keys.append((key, len(data)))

    async with _session(concurrency) as session:
        result.seconds, result.errors = await _run_workers(concurrency, count, duration, work)
    return result


async def download_phase(
    target: Target, keys: Sequence[tuple[str, int]], *, concurrency: int = 16, count: int | None = None,
    duration: float | None = None, range_bytes: int | None = None,
) -> PhaseResult:
    """Download ``keys`` (cycled): whole images, or a ``range_bytes`` slice from the middle."""
    if count is None and duration is None:
        count = len(keys)
    result = PhaseResult(target.name, "download", concurrency, 0.0, 0)

    async def work(job: int, started: float) -> None:
        key, size = keys[job % len(keys)]
        byte_range = None
        if range_bytes is not None and size > range_bytes:
            first = size // 2 - range_bytes // 2
            byte_range = (first, first + range_bytes)
        begin = time.perf_counter()
        ok = False
        received = 0
        try:
            received = await target.download(session, key, byte_range)
            expected = byte_range[1] - byte_range[0] if byte_range else size
            if received != expected:
                raise RuntimeError(f"{target.name}: got {received} bytes, expected {expected}")
            ok = True
        finally:
            end = time.perf_counter()
            result.requests.append(Request(begin - started, end - begin, received, ok))
        result.payload_bytes += received

    async with _session(concurrency) as session:
        result.seconds, result.errors = await _run_workers(concurrency, count, duration, work)
    return result


async def delete_all(target: Target, keys: Sequence[tuple[str, int]], concurrency: int = 8) -> None:
    async with _session(concurrency) as session:
        async def work(job: int, started: float) -> None:
            await target.delete(session, keys[job][0])

        await _run_workers(concurrency, len(keys), None, work)


def main() -> int:
    parser = argparse.ArgumentParser(description="upload/download driver against one target")
    parser.add_argument("kind", choices=("vault", "sink", "s3"))
    parser.add_argument("--url", required=True, help="base URL (s3: the endpoint)")
    parser.add_argument("--token", help="imagevault bearer token")
    parser.add_argument("--bucket", default="bench")
    parser.add_argument("--access-key")
    parser.add_argument("--secret-key")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--download", action="store_true", help="download what was uploaded, for as long")
    args = parser.parse_args()
    from bench.images import ensure_images

    images = [i.read() for i in ensure_images() if i.kind == "total_body"]
    if args.kind == "vault":
        target: Target = VaultTarget(args.url, args.token)
    elif args.kind == "sink":
        target = SinkTarget(args.url)
    else:
        target = S3Target(args.url, args.bucket, args.access_key, args.secret_key)
    up = asyncio.run(upload_phase(target, images, concurrency=args.concurrency, duration=args.duration))
    print(json.dumps(up.summary()))
    if args.download:
        down = asyncio.run(download_phase(target, up.keys, concurrency=args.concurrency, duration=args.duration))
        print(json.dumps(down.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
