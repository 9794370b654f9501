"""A whole session over a network that cuts connections at random points, before and after the
server's response: exactly one record per image, none duplicated, every one byte-identical."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from tests.client.test_client import FAST, JPEG, base_url
from tests.conftest import sample_metadata
from tests.infra.faultproxy import FaultProxy
from vault.api.app import create_app
from vault.client import AsyncClient

IMAGES = 200


@pytest.fixture
async def server(aiohttp_server: Any, service: Any) -> Any:
    return await aiohttp_server(create_app(service.config, vault=service))


def image(n: int) -> bytes:
    return JPEG[:-2] + n.to_bytes(4, "big") * (200 + n) + b"\xff\xd9"


async def stored_digests(client: AsyncClient, session: str) -> list[str]:
    return [r["sha256"] async for r in client.search(session_id=session, limit=1000)]


async def test_a_session_of_200_images_through_a_flaky_network_is_stored_exactly_once(server, api):
    proxy = FaultProxy(server.host, server.port)
    proxy.random_cut_ratio = 0.6  # six connections in ten break (kept alive, each carries many requests)
    url = await proxy.start()
    token = await api.token("clinician")
    try:
        patience = FAST.__class__(attempts=12, base=0.01, cap=0.05)
        async with AsyncClient(url, token=token, retry=patience) as client:
            sem = asyncio.Semaphore(8)

            async def send(n: int) -> dict[str, Any]:
                async with sem:
                    return await client.upload(image(n), sample_metadata(session_id="S-flaky", lesion_id=f"L-{n}"),
                                               content_type="image/jpeg")

            records = await asyncio.gather(*(send(n) for n in range(IMAGES)))
        cuts = proxy.cuts
    finally:
        await proxy.close()
    async with AsyncClient(base_url(server), token=token, retry=FAST) as direct:
        digests = await stored_digests(direct, "S-flaky")
        assert len(digests) == IMAGES == len({r["id"] for r in records})
        assert sorted(digests) == sorted(hashlib.sha256(image(n)).hexdigest() for n in range(IMAGES))
        for n in (0, IMAGES // 2, IMAGES - 1):
            assert await direct.read_range(records[n]["id"], 0, len(image(n))) == image(n)
    assert cuts >= 10  # the network really was flaky


async def test_tuspy_through_the_flaky_network_stores_each_image_once(server, api):
    """An off-the-shelf tus client, resumed by URL after each failure as its documentation shows."""
    import io
    import json

    from tusclient import client as tus_client
    from tusclient.exceptions import TusCommunicationError, TusUploadFailed

    proxy = FaultProxy(server.host, server.port)
    url = await proxy.start()
    token = await api.token("clinician")

    def upload_all() -> int:
        attempts = 0
        tus = tus_client.TusClient(f"{url}/v1/uploads", headers={"Authorization": f"Bearer {token}"})
        for n in range(20):
            data = image(1000 + n)
            meta = {"metadata": json.dumps(sample_metadata(session_id="S-tus", lesion_id=f"T-{n}")),
                    "content_type": "image/jpeg"}
            upload_url = None
            while True:
                attempts += 1
                assert attempts < 400, "no progress through the proxy"
                try:
                    uploader = tus.uploader(file_stream=io.BytesIO(data), chunk_size=4096, metadata=meta,
                                            url=upload_url)
                    upload_url = uploader.url  # created (or found again): later attempts resume it
                    uploader.upload()
                    break
                except (TusCommunicationError, TusUploadFailed, OSError):
                    continue
        return attempts

    proxy.random_cut_ratio = 0.2
    try:
        attempts = await asyncio.to_thread(upload_all)
    finally:
        await proxy.close()
    async with AsyncClient(base_url(server), token=token, retry=FAST) as direct:
        digests = await stored_digests(direct, "S-tus")
    assert sorted(digests) == sorted(hashlib.sha256(image(1000 + n)).hexdigest() for n in range(20))
    assert proxy.cuts > 0 and attempts > 20
