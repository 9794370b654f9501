"""The asynchronous client (the only module of the client that imports httpx).

Every call retries what is safe to retry: transport failures and the temporary answers (408,
429, 503, and 409 for an idempotency key still in flight), with exponential backoff and full
jitter, waiting at least what ``Retry-After`` asks. Creating an image or erasing a patient sends
an ``Idempotency-Key`` generated once per logical call and reused by every retry, so a lost
response never becomes a second record. A delete, which has no key, is retried only when the
request cannot have reached the server (a failed connect) or the server refused it before any
work (503).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from vault.client.errors import DownloadCorrupt, TransportFailed, error_for

RETRY_STATUSES = frozenset({408, 429, 503})
IN_FLIGHT_CODES = frozenset({"idempotency_key_in_flight"})
CHUNK = 1 << 20
DEFAULT_TUS_THRESHOLD = 32 << 20
TUS_CHUNK = 8 << 20


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # the first try included
    base: float = 0.25  # seconds; doubled per attempt, full jitter
    cap: float = 30.0  # the longest wait between attempts (Retry-After may ask for longer, up to max_wait)
    max_wait: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = random.uniform(0, min(self.cap, self.base * (2 ** attempt)))
        return min(self.max_wait, max(backoff, retry_after or 0.0))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.isdigit():
        return float(value)
    moment = email.utils.parsedate_to_datetime(value)
    return max(0.0, moment.timestamp() - time.time()) if moment is not None else None


def _raise_for(response: httpx.Response, body: bytes) -> None:
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    raise error_for(response.status_code, parsed, _retry_after(response))


class AsyncClient:
    """imagevault over HTTP. ``token``: an ``ivt_`` token or a JWT (``token_file`` reads it from
    a file, so it never sits in argv or the environment); ``verify``: True, False or a CA bundle
    path; ``cert``: a client certificate (path, or (cert, key)) for mutual TLS;
    ``on_behalf_of``: the user an application token acts for (``X-On-Behalf-Of``)."""

    def __init__(
        self, base_url: str, *, token: str | None = None, token_file: str | os.PathLike[str] | None = None,
        timeout: float = 60.0, connect_timeout: float = 10.0, verify: bool | str = True,
        cert: str | tuple[str, str] | None = None, retry: RetryPolicy = RetryPolicy(),
        on_behalf_of: str | None = None, tus_threshold: int = DEFAULT_TUS_THRESHOLD,
    ) -> None:
        if token_file is not None:
            token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError("a token (or token_file) is required")
        headers = {"Authorization": f"Bearer {token}", "User-Agent": "imagevault-client"}
        if on_behalf_of:
            headers["X-On-Behalf-Of"] = on_behalf_of
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, verify=verify, cert=cert,
            timeout=httpx.Timeout(timeout, connect=connect_timeout), follow_redirects=False,
        )
        self._retry = retry
        self._tus_threshold = tus_threshold
        self._tus: bool | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # the request loop -------------------------------------------------------------------------
    async def _request(self, method: str, url: str, *, replayable: bool = True, **kwargs: Any) -> httpx.Response:
        """One logical request: retried per the policy; the final error answer raised.
        ``replayable=False``: retry only what cannot have reached the server (a failed connect,
        a 503 refusal)."""
        body_factory = kwargs.pop("body_factory", None)
        attempt = 0
        while True:
            if body_factory is not None:
                kwargs.update(body_factory())  # a fresh body per attempt (files are read again)
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if attempt + 1 >= self._retry.attempts or (sent and not replayable):
                    raise TransportFailed(f"{method} {url}: {exc.__class__.__name__}") from exc
                await asyncio.sleep(self._retry.delay(attempt, None))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            body = response.content
            retryable = response.status_code == 503 or (replayable and response.status_code in RETRY_STATUSES)
            if response.status_code == 409 and replayable:
                try:
                    retryable = json.loads(body)["error"]["code"] in IN_FLIGHT_CODES
                except (ValueError, KeyError, TypeError):
                    retryable = False
            if not retryable or attempt + 1 >= self._retry.attempts:
                _raise_for(response, body)
            await asyncio.sleep(self._retry.delay(attempt, _retry_after(response)))
            attempt += 1

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return (await self._request(method, url, **kwargs)).json()

    # images -----------------------------------------------------------------------------------
    async def upload(
        self, source: str | os.PathLike[str] | bytes, metadata: Mapping[str, Any], *, content_type: str,
        idempotency_key: str | None = None, filename: str = "image",
    ) -> dict[str, Any]:
        """Store one image (a file path or bytes) with its metadata; the record. The SHA-256 is
        computed here and sent, so the server refuses a body damaged on the way (422), and one
        idempotency key covers every retry of this call. Files above ``tus_threshold`` go through
        the resumable protocol when the server offers it."""
        key = idempotency_key or str(uuid.uuid4())
        digest, size = _digest(source)
        meta = {**metadata, "sha256": digest}
        if size >= self._tus_threshold and await self._has_tus():
            return await self._upload_tus(source, meta, content_type, size, key)

        def body() -> dict[str, Any]:
            data = source if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115 - httpx reads it
            return {"files": [("metadata", (None, json.dumps(meta), "application/json")),
                              ("file", (filename, data, content_type))]}

        response = await self._request("POST", "/v1/images", headers={"Idempotency-Key": _sf_string(key)},
                                       body_factory=body)
        return response.json()

    async def metadata(self, record_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/images/{record_id}/metadata")

    async def update_metadata(self, record_id: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self._json("PATCH", f"/v1/images/{record_id}/metadata", json=dict(patch))

    async def delete(self, record_id: str, *, reason: str | None = None, override: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = {"override": "true"} if override else {}
        if reason:
            params["reason"] = reason
        return await self._json("DELETE", f"/v1/images/{record_id}", params=params, replayable=False)

    async def read_range(self, record_id: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of the image."""
        response = await self._request("GET", f"/v1/images/{record_id}", headers={"Range": f"bytes={start}-{end - 1}"})
        return response.content

    async def download(self, record_id: str, dest: str | os.PathLike[str]) -> Path:
        """Stream the image to ``dest`` (written beside it, then renamed), resuming by range after
        a broken connection, and verify the whole file against the announced ``Repr-Digest``;
        ``DownloadCorrupt`` (and nothing left at ``dest``) if it does not match."""
        target = Path(dest)
        partial = target.with_name(target.name + ".partial")
        digest = hashlib.sha256()
        expected: str | None = None
        etag: str | None = None
        offset = 0
        attempt = 0
        with open(partial, "wb") as handle:
            while True:
                headers = {"Range": f"bytes={offset}-"} if offset else {}
                try:
                    async with self._http.stream("GET", f"/v1/images/{record_id}", headers=headers) as response:
                        if response.status_code >= 400:
                            body = await response.aread()
                            if response.status_code in RETRY_STATUSES and attempt + 1 < self._retry.attempts:
                                raise _Retry(_retry_after(response))
                            _raise_for(response, body)
                        if etag is not None and response.headers.get("ETag") != etag:
                            raise DownloadCorrupt("the image changed while it was being downloaded")
                        etag = response.headers.get("ETag")
                        expected = expected or response.headers.get("Repr-Digest")
                        async for piece in response.aiter_bytes(CHUNK):
                            handle.write(piece)
                            digest.update(piece)
                            offset += len(piece)
                    break
                except (httpx.TransportError, _Retry) as exc:
                    if attempt + 1 >= self._retry.attempts:
                        partial.unlink(missing_ok=True)
                        raise TransportFailed(f"download of {record_id} kept failing") from exc
                    await asyncio.sleep(self._retry.delay(attempt, getattr(exc, "retry_after", None)))
                    attempt += 1
                except BaseException:
                    handle.close()
                    partial.unlink(missing_ok=True)
                    raise
            handle.flush()
            os.fsync(handle.fileno())
        announced = _sha256_of(expected)
        if announced is None or announced != digest.digest():
            partial.unlink(missing_ok=True)
            raise DownloadCorrupt(f"image {record_id} did not match its announced digest")
        os.replace(partial, target)
        return target

    # search and patients ------------------------------------------------------------------------
    async def search(self, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """Every matching record, page after page (a short or empty page is not the end: only a
        null ``next_cursor`` is)."""
        cursor = None
        while True:
            page = await self._json("POST", "/v1/search", json={**filters, "cursor": cursor})
            for item in page["items"]:
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def erase_patient(self, patient_id: str, *, reason: str, override_retention: bool = False,
                            idempotency_key: str | None = None) -> dict[str, Any]:
        key = idempotency_key or str(uuid.uuid4())
        body = {"patient_id": patient_id, "reason": reason, "override_retention": override_retention}
        return await self._json("POST", "/v1/patients/erase", json=body, headers={"Idempotency-Key": _sf_string(key)})

    async def set_legal_hold(self, patient_id: str, *, hold: bool, reason: str) -> dict[str, Any]:
        return await self._json("POST", "/v1/patients/legal-hold",
                                json={"patient_id": patient_id, "hold": hold, "reason": reason})

    async def export_patient(self, patient_id: str, dest: str | os.PathLike[str]) -> Path:
        """The subject access export (a zip) streamed to ``dest`` (written beside it, then
        renamed; nothing left there if the transfer breaks: the server aborts an export whose
        image fails its integrity check, and a truncated zip must not pass for a complete one)."""
        target = Path(dest)
        partial = target.with_name(target.name + ".partial")
        try:
            async with self._http.stream("POST", "/v1/patients/export", json={"patient_id": patient_id}) as response:
                if response.status_code >= 400:
                    _raise_for(response, await response.aread())
                with open(partial, "wb") as handle:
                    async for piece in response.aiter_bytes(CHUNK):
                        handle.write(piece)
                    handle.flush()
                    os.fsync(handle.fileno())
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise TransportFailed(f"export broke off: {exc.__class__.__name__}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
        return target

    async def access_report(self, patient_id: str) -> dict[str, Any]:
        return await self._json("POST", "/v1/patients/access-report", json={"patient_id": patient_id})

    async def audit(self, *, after: int = 0, limit: int = 1000, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """Audit entries the caller may see, from ``after`` on (filters: record_id, actor, since, until)."""
        while True:
            params = {"after": after, "limit": limit, **{k: v for k, v in filters.items() if v is not None}}
            page = await self._json("GET", "/v1/audit", params=params)
            for entry in page["entries"]:
                yield entry
            if page.get("next_after") is None:
                return
            after = page["next_after"]

    # resumable uploads ------------------------------------------------------------------------
    async def _has_tus(self) -> bool:
        if self._tus is None:
            try:
                response = await self._http.options("/v1/uploads")
                self._tus = response.status_code < 300 and "Tus-Version" in response.headers
            except httpx.TransportError:
                self._tus = False
        return self._tus

    async def _upload_tus(self, source: str | os.PathLike[str] | bytes, meta: Mapping[str, Any], content_type: str,
                          size: int, key: str) -> dict[str, Any]:
        tus = {"Tus-Resumable": "1.0.0"}
        encoded = ",".join(f"{name} {base64.b64encode(value.encode()).decode()}"
                           for name, value in (("metadata", json.dumps(dict(meta))), ("content_type", content_type)))
        created = await self._request("POST", "/v1/uploads", headers={
            **tus, "Upload-Length": str(size), "Upload-Metadata": encoded,
        })
        location = created.headers["Location"]
        offset = 0
        attempt = 0
        while True:
            if offset < size:
                piece = _read_at(source, offset, TUS_CHUNK)
                checksum = "sha256 " + base64.b64encode(hashlib.sha256(piece).digest()).decode()
                try:
                    response = await self._http.patch(location, content=piece, headers={
                        **tus, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
                        "Upload-Checksum": checksum,
                    })
                except httpx.TransportError as exc:
                    response = None
                    error: BaseException | None = exc
                else:
                    error = None
                if response is not None and response.status_code == 204:
                    offset = int(response.headers["Upload-Offset"])
                    attempt = 0
                    if offset >= size:
                        return await self.metadata(response.headers["Content-Location"].rsplit("/", 1)[-1])
                    continue
                if response is not None and response.status_code not in (409, 460, *RETRY_STATUSES):
                    _raise_for(response, response.content)
            if attempt + 1 >= self._retry.attempts:
                raise TransportFailed(f"resumable upload to {location} kept failing") from error
            await asyncio.sleep(self._retry.delay(attempt, None))
            attempt += 1
            head = await self._request("HEAD", location, headers=tus)  # where the server really is
            offset = int(head.headers["Upload-Offset"])
            if offset >= size and "Content-Location" in head.headers:
                return await self.metadata(head.headers["Content-Location"].rsplit("/", 1)[-1])


class _Retry(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__()
        self.retry_after = retry_after


def _sf_string(key: str) -> str:
    """An idempotency key as the header carries it: an RFC 8941 string (quoted)."""
    if not 1 <= len(key) <= 255 or not all(" " <= c <= "~" and c not in '"\\' for c in key):
        raise ValueError("an idempotency key is 1-255 printable ASCII characters, without quotes or backslashes")
    return f'"{key}"'


def _digest(source: str | os.PathLike[str] | bytes) -> tuple[str, int]:
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest(), len(source)
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as handle:
        while piece := handle.read(CHUNK):
            digest.update(piece)
            size += len(piece)
    return digest.hexdigest(), size


def _read_at(source: str | os.PathLike[str] | bytes, offset: int, length: int) -> bytes:
    if isinstance(source, bytes):
        return source[offset:offset + length]
    with open(source, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def _sha256_of(header: str | None) -> bytes | None:
    """The sha-256 of an RFC 9530 digest field (``sha-256=:base64:``), if present."""
    for member in (header or "").split(","):
        name, _, value = member.strip().partition("=")
        if name == "sha-256" and value.startswith(":") and value.endswith(":"):
            try:
                return base64.b64decode(value[1:-1])
            except ValueError:
                return None
    return None
