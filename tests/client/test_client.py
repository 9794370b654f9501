"""vault.client against the real app on a loopback port (and through a fault-injecting proxy)."""

from __future__ import annotations

import asyncio
import hashlib
import zipfile
from typing import Any

import pytest

from tests.conftest import PATIENT_IDS, sample_metadata
from tests.infra.faultproxy import FaultProxy, Plan
from vault.api.app import create_app
from vault.client import AsyncClient, Client, DownloadCorrupt, RetryPolicy, TransportFailed
from vault.client import errors as client_errors
from vault.errors import error_codes

FAST = RetryPolicy(attempts=6, base=0.01, cap=0.05)
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 64 + b"\xff\xd9"


@pytest.fixture
async def server(aiohttp_server: Any, service: Any) -> Any:
    return await aiohttp_server(create_app(service.config, vault=service))


async def token(api: Any, role: str = "clinician") -> str:
    return await api.token(role)


@pytest.fixture
async def tokens(api: Any) -> dict[str, str]:
    return {role: await api.token(role) for role in ("clinician", "dpo", "researcher", "auditor")}


def base_url(server: Any) -> str:
    return str(server.make_url("")).rstrip("/")


async def test_upload_read_update_search_delete_round_trip(server, tokens, tmp_path):
    async with AsyncClient(base_url(server), token=tokens["dpo"], retry=FAST) as client:
        path = tmp_path / "lesion.jpg"
        path.write_bytes(JPEG)
        first = await client.upload(path, sample_metadata(lesion_id="L-7"), content_type="image/jpeg")
        second = await client.upload(JPEG + b"second", sample_metadata(lesion_id="L-7"), content_type="image/jpeg")
        assert first["sha256"] == hashlib.sha256(JPEG).hexdigest()
        assert (await client.metadata(first["id"]))["id"] == first["id"]
        updated = await client.update_metadata(first["id"], {"tags": ["follow-up"]})
        assert updated["tags"] == ["follow-up"]
        found = [r["id"] async for r in client.search(lesion_id="L-7", limit=1)]  # one record per page
        assert sorted(found) == sorted([first["id"], second["id"]])
        assert await client.read_range(first["id"], 0, 4) == JPEG[:4]
        target = await client.download(first["id"], tmp_path / "out.jpg")
        assert target.read_bytes() == JPEG and not (tmp_path / "out.jpg.partial").exists()
        shredded = await client.delete(second["id"], override=True, reason="duplicate")
        assert shredded["shredded"] is True
        with pytest.raises(client_errors.NotFound) as caught:
            await client.metadata(second["id"])
        assert caught.value.status == 404 and caught.value.request_id


async def test_errors_are_typed_by_code(server, tokens):
    async with AsyncClient(base_url(server), token=tokens["researcher"], retry=FAST) as client:
        with pytest.raises(client_errors.Forbidden):
            await client.upload(JPEG, sample_metadata(), content_type="image/jpeg")
    async with AsyncClient(base_url(server), token=tokens["clinician"], retry=FAST) as client:
        with pytest.raises(client_errors.InvalidMetadata) as caught:
            await client.upload(JPEG, {**sample_metadata(), "modality": "x-ray-vision"}, content_type="image/jpeg")
        assert caught.value.field == "modality"
    async with AsyncClient(base_url(server), token="ivt_" + "x" * 43, retry=FAST) as client:
        with pytest.raises(client_errors.Unauthorized):
            await client.metadata("0" * 26)


def test_every_code_the_server_answers_has_its_class():
    assert set(error_codes()) <= set(client_errors.BY_CODE)


async def test_patients_export_audit_and_access_report(server, tokens, tmp_path):
    patient = PATIENT_IDS[0]
    async with AsyncClient(base_url(server), token=tokens["dpo"], retry=FAST) as dpo:
        record = await dpo.upload(JPEG, sample_metadata(patient_id=patient), content_type="image/jpeg")
        assert (await dpo.set_legal_hold(patient, hold=True, reason="litigation"))["updated"] == 1
        archive = await dpo.export_patient(patient, tmp_path / "export.zip")
        with zipfile.ZipFile(archive) as zipped:
            assert "manifest.json" in zipped.namelist()
        report = await dpo.access_report(patient)
        assert record["id"] in str(report)
        await dpo.set_legal_hold(patient, hold=False, reason="closed")
        erased = await dpo.erase_patient(patient, reason="request", override_retention=True)
        assert erased["shredded"] == 1
    async with AsyncClient(base_url(server), token=tokens["auditor"], retry=FAST) as auditor:
        entries = [e async for e in auditor.audit(limit=2)]  # several pages
        assert any(e["action"] == "erase" for e in entries)
        assert len({e["seq"] for e in entries}) == len(entries)


async def test_a_download_cut_midway_resumes_by_range_and_a_flipped_byte_is_caught(server, tokens, tmp_path):
    payload = JPEG + bytes(range(256)) * 4096  # 1 MiB
    async with AsyncClient(base_url(server), token=tokens["clinician"], retry=FAST) as direct:
        record = await direct.upload(payload, sample_metadata(), content_type="image/jpeg")
    proxy = FaultProxy(server.host, server.port)
    url = await proxy.start()
    try:
        async with AsyncClient(url, token=tokens["clinician"], retry=FAST) as client:
            proxy.plans.append(Plan(cut_response_after=300_000))
            out = await client.download(record["id"], tmp_path / "resumed.jpg")
            assert out.read_bytes() == payload and proxy.cuts == 1

        async with AsyncClient(url, token=tokens["clinician"], retry=FAST) as client:  # a new connection
            proxy.plans.append(Plan(flip_response_byte=200_000))
            with pytest.raises(DownloadCorrupt):
                await client.download(record["id"], tmp_path / "corrupt.jpg")
            assert not (tmp_path / "corrupt.jpg").exists() and not (tmp_path / "corrupt.jpg.partial").exists()
    finally:
        await proxy.close()


async def test_connect_failures_are_retried_then_reported(tokens, unused_tcp_port):
    attempts = RetryPolicy(attempts=3, base=0.01, cap=0.02)
    async with AsyncClient(f"http://127.0.0.1:{unused_tcp_port}", token=tokens["clinician"], retry=attempts) as client:
        with pytest.raises(TransportFailed):
            await client.metadata("0" * 26)


async def test_the_blocking_client_does_the_same(server, tokens, tmp_path):
    url = base_url(server)

    def work() -> tuple[str, list[str], bytes]:
        with Client(url, token=tokens["clinician"], retry=FAST) as client:
            record = client.upload(JPEG, sample_metadata(session_id="S-9"), content_type="image/jpeg")
            found = [r["id"] for r in client.search(session_id="S-9")]
            client.download(record["id"], tmp_path / "sync.jpg")
            return record["id"], found, (tmp_path / "sync.jpg").read_bytes()

    rid, found, data = await asyncio.to_thread(work)
    assert found == [rid] and data == JPEG


def test_the_token_may_come_from_a_file_and_is_required(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("ivt_" + "a" * 43 + "\n")
    client = AsyncClient("http://127.0.0.1:1", token_file=secret)
    assert client._http.headers["Authorization"] == "Bearer ivt_" + "a" * 43
    with pytest.raises(ValueError):
        AsyncClient("http://127.0.0.1:1")
    asyncio.run(client.aclose())


async def test_large_files_go_through_the_resumable_protocol_and_survive_a_cut(server, tokens, service):
    from vault.client import aio

    payload = JPEG[:-2] + bytes(range(256)) * 12_000 + b"\xff\xd9"  # ~3 MB
    proxy = FaultProxy(server.host, server.port)
    url = await proxy.start()
    old_chunk = aio.TUS_CHUNK
    aio.TUS_CHUNK = 1 << 20  # three PATCHes, so a cut can land between and inside them
    try:
        # One kept-alive connection carries the OPTIONS probe, the creation and the first PATCH:
        # it is cut 600 kB into the request bytes, halfway through that PATCH's body.
        proxy.plans.append(Plan(cut_request_after=600_000))
        async with AsyncClient(url, token=tokens["clinician"], retry=FAST, tus_threshold=1 << 20) as client:
            record = await client.upload(payload, sample_metadata(lesion_id="L-big"), content_type="image/jpeg")
        assert record["sha256"] == hashlib.sha256(payload).hexdigest() and record["size"] == len(payload)
        assert proxy.cuts == 1
        starts = [e for e in service.audit.page(0, 1000).entries if e.event.action == "upload_start"]
        assert len(starts) == 1 and service.count_records() == 1
    finally:
        aio.TUS_CHUNK = old_chunk
        await proxy.close()
