"""The synchronous client: the asynchronous one, run on a private event loop in its own thread.

One implementation of the protocol (retries, idempotency keys, resumable uploads, digest checks)
serves both: a blocking call here submits the coroutine to that loop and waits for it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from vault.client.aio import AsyncClient

T = TypeVar("T")


class Client:
    """Blocking imagevault client; the same arguments and methods as ``AsyncClient``."""

    def __init__(self, base_url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="imagevault-client", daemon=True)
        self._thread.start()
        self._async = self._run(_make(base_url, options))

    def _run(self, coroutine: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()  # type: ignore[arg-type]

    def _iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        while True:
            try:
                yield self._run(iterator.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upload(self, source: str | os.PathLike[str] | bytes, metadata: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        return self._run(self._async.upload(source, metadata, **options))

    def metadata(self, record_id: str) -> dict[str, Any]:
        return self._run(self._async.metadata(record_id))

    def update_metadata(self, record_id: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self._run(self._async.update_metadata(record_id, patch))

    def delete(self, record_id: str, **options: Any) -> dict[str, Any]:
        return self._run(self._async.delete(record_id, **options))

    def read_range(self, record_id: str, start: int, end: int) -> bytes:
        return self._run(self._async.read_range(record_id, start, end))

    def download(self, record_id: str, dest: str | os.PathLike[str]) -> Path:
        return self._run(self._async.download(record_id, dest))

    def search(self, **filters: Any) -> Iterator[dict[str, Any]]:
        return self._iterate(self._async.search(**filters))

    def erase_patient(self, patient_id: str, **options: Any) -> dict[str, Any]:
        return self._run(self._async.erase_patient(patient_id, **options))

    def set_legal_hold(self, patient_id: str, **options: Any) -> dict[str, Any]:
        return self._run(self._async.set_legal_hold(patient_id, **options))

    def export_patient(self, patient_id: str, dest: str | os.PathLike[str]) -> Path:
        return self._run(self._async.export_patient(patient_id, dest))

    def access_report(self, patient_id: str) -> dict[str, Any]:
        return self._run(self._async.access_report(patient_id))

    def audit(self, **filters: Any) -> Iterator[dict[str, Any]]:
        return self._iterate(self._async.audit(**filters))


async def _make(base_url: str, options: dict[str, Any]) -> AsyncClient:
    return AsyncClient(base_url, **options)  # built on the loop that will use it
