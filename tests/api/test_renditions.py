"""Thumbnails and previews through the API, on both blob stores: made in the background from the
sealed original, sealed like it, served with ETags, shredded with the record; hostile images fail
their own job only; a restart resumes the backlog.

Most tests run the queue with ``renditions.drain()`` (deterministic); the restart test lets the
daemon's own worker do it.
"""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta
from typing import Any

import pytest
from PIL import Image

from tests.conftest import STORES, Api, open_vault, sample_metadata
from vault.api.app import create_app
from vault.auth import Principal, Role
from vault.config import Config
from vault.ids import decode_id, encode_id
from vault.store.backends.base import rendition_blob_id
from vault.store.format import derive_rendition_key
from vault.store.sealer import open_under


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return request.param


def jpeg(width: int, height: int, *, orientation: int = 1, colour: tuple[int, int, int] = (200, 80, 60)) -> bytes:
    im = Image.new("RGB", (width, height), colour)
    im.paste((0, 0, 255), (0, 0, width // 2, height // 2))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010E] = "Jane Doe, mole on the back"
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def webp_size(data: bytes) -> tuple[int, int]:
    im = Image.open(io.BytesIO(data))
    assert im.format == "WEBP"
    im.load()
    return im.size


async def get(api: Any, record_id: str, kind: str, *, role: str = "clinician", **headers: str) -> Any:
    return await api.client.get(f"/v1/images/{record_id}/{kind}", headers={**await api.headers(role), **headers})


async def test_renditions_are_pending_then_served_oriented_with_etags(api: Any) -> None:
    record = await api.upload(jpeg(3000, 2000, orientation=6))  # shown rotated: portrait
    assert record["renditions"] == {"state": "queued"}
    pending = await get(api, record["id"], "thumbnail")
    assert pending.status == 409 and (await pending.json())["error"]["code"] == "rendition_pending"
    assert int(pending.headers["Retry-After"]) > 0
    assert await api.service.renditions.drain() == 1

    thumb = await get(api, record["id"], "thumbnail")
    assert thumb.status == 200 and thumb.content_type == "image/webp"
    assert thumb.headers["Cache-Control"] == "private, no-store"
    body = await thumb.read()
    assert webp_size(body) == (171, 256)
    assert b"Jane" not in body and b"Exif" not in body
    preview = await get(api, record["id"], "preview")
    assert webp_size(await preview.read()) == (853, 1280)
    assert preview.headers["ETag"] != thumb.headers["ETag"]

    again = await get(api, record["id"], "thumbnail", **{"If-None-Match": thumb.headers["ETag"]})
    assert again.status == 304 and again.headers["ETag"] == thumb.headers["ETag"]
    head = await api.client.head(f"/v1/images/{record['id']}/thumbnail", headers=await api.headers())
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(body)

    meta = await (await api.client.get(f"/v1/images/{record['id']}/metadata", headers=await api.headers())).json()
    assert meta["renditions"] == {"state": "ready"}
    found = await (await api.client.post("/v1/search", json={"patient_id": sample_metadata()["patient_id"]},
                                         headers=await api.headers())).json()
    assert [item["renditions"] for item in found["items"]] == [{"state": "ready"}]

    reads = [e.event for e in api.service.audit.page(0, 10_000).entries if e.event.action == "read"]
    assert {(e.details or {}).get("rendition") for e in reads} >= {"thumbnail", "preview"}


async def test_unknown_ids_and_other_tenants_get_404(api: Any) -> None:
    record = await api.upload(jpeg(400, 300))
    await api.service.renditions.drain()
    assert (await get(api, "0" * 26, "thumbnail")).status == 404
    other = await api.client.get(f"/v1/images/{record['id']}/preview", headers=await api.headers(tenant="clinic-b"))
    assert other.status == 404


async def test_researchers_read_renditions_of_consented_records_only(api: Any) -> None:
    consented = await api.upload(jpeg(800, 600), sample_metadata(consent={"research": True}))
    private = await api.upload(jpeg(800, 600), sample_metadata(consent={"research": False}))
    await api.service.renditions.drain()
    assert (await get(api, consented["id"], "thumbnail", role="researcher")).status == 200
    assert (await get(api, private["id"], "thumbnail", role="researcher")).status == 404


async def test_formats_without_renditions_are_unavailable(api: Any) -> None:
    mesh = await api.upload(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n", content_type="model/ply")
    assert mesh["renditions"] == {"state": "unavailable", "reason": "unsupported_format"}
    answer = await get(api, mesh["id"], "preview")
    assert answer.status == 422 and (await answer.json())["error"]["code"] == "rendition_unavailable"
    assert await api.service.renditions.drain() == 0  # nothing was queued


def bomb() -> bytes:
    out = io.BytesIO()
    Image.new("L", (20000, 20000)).save(out, "PNG", optimize=True)  # 400 MP in a few hundred KB
    return out.getvalue()


async def test_hostile_images_fail_their_own_jobs_only(api: Any) -> None:
    whole = jpeg(1600, 1200)
    bad_png = await api.upload(bomb(), content_type="image/png")
    truncated = await api.upload(whole[: len(whole) // 2])
    good = await api.upload(jpeg(1600, 1200, colour=(10, 200, 10)))
    assert await api.service.renditions.drain() == 3
    states = {rid: api.service.rendition_state(rid) for rid in (bad_png["id"], truncated["id"], good["id"])}
    assert (states[bad_png["id"]].state, states[bad_png["id"]].reason) == ("failed", "too_large")
    assert (states[truncated["id"]].state, states[truncated["id"]].reason) == ("failed", "undecodable")
    assert states[good["id"]].state == "ready"
    for rid in (bad_png["id"], truncated["id"]):
        answer = await get(api, rid, "thumbnail")
        assert answer.status == 422 and (await answer.json())["error"]["code"] == "rendition_unavailable"
    assert (await get(api, good["id"], "thumbnail")).status == 200
    failures = api.service.metrics.rendition_failures
    assert failures.labels("too_large")._value.get() == 1 and failures.labels("undecodable")._value.get() == 1
    assert await api.service.renditions.drain() == 0  # failed jobs are not retried


async def test_rendition_blobs_are_sealed_and_shredded_with_the_record(api: Any) -> None:
    record = await api.upload(jpeg(2000, 1500), sample_metadata())
    await api.service.renditions.drain()
    service = api.service
    rid = decode_id(record["id"])
    plain = {kind: await (await get(api, record["id"], kind)).read() for kind in ("thumbnail", "preview")}
    dek = await service.context.data_keys.unwrap_one(rid)
    stored = {}
    for kind in ("thumbnail", "preview"):
        name = rendition_blob_id(record["id"], kind)
        stored[kind] = await service.backend.read(name, 0, 1 << 24)
        # Ciphertext only: no WebP signature, no run of the plaintext.
        assert b"WEBP" not in stored[kind] and plain[kind][100:132] not in stored[kind]
        assert open_under(derive_rendition_key(dek, rid, kind), rid, stored[kind]) == plain[kind]

    deleted = await api.client.delete(f"/v1/images/{record['id']}?override=true&reason=test",
                                      headers=await api.headers("dpo"))
    assert deleted.status == 200, await deleted.json()
    for kind in ("thumbnail", "preview"):
        assert (await get(api, record["id"], kind)).status == 404
    names = {name async for name in service.backend.list_ids()}
    assert not any(name.startswith(record["id"]) for name in names)
    # The disk thief with a copy of the old blobs: the index keeps no wrapped DEK to open them with.
    assert service.index.read(lambda t: t.get_dek(rid)) is None
    assert service.rendition_state(record["id"]) is None


async def test_gc_keeps_live_renditions_and_deletes_orphaned_ones(api: Any) -> None:
    record = await api.upload(jpeg(600, 400))
    await api.service.renditions.drain()
    service = api.service
    orphan = rendition_blob_id(encode_id(bytes(16)), "preview")  # a record id from 1970: long gone
    writer = await service.backend.open_writer(orphan)
    await writer.write(b"\0" * 64)
    await writer.commit()
    admin = Principal("-", Role.ADMIN, "test-admin")
    result = await service.collect_garbage(admin, min_age=timedelta(0))
    names = {name async for name in service.backend.list_ids()}
    assert orphan not in names and result.removed == 1
    assert {rendition_blob_id(record["id"], k) for k in ("thumbnail", "preview")} <= names


async def test_a_restart_resumes_the_backlog(config: Config, aiohttp_client: Any) -> None:
    assert config.rendition_workers == 0  # the first run only queues jobs
    first = await open_vault(config)
    try:
        api = Api(await aiohttp_client(create_app(config, vault=first)), first, {})
        ids = [(await api.upload(jpeg(900, 600 + n)))["id"] for n in range(3)]
        assert first.renditions.backlog == 3
        await api.client.close()
    finally:
        await first.close()

    second = await open_vault(config.with_overrides(rendition_workers=1))
    try:
        second.start_background()
        for _ in range(300):
            if all(second.rendition_state(rid).state == "ready" for rid in ids):
                break
            await asyncio.sleep(0.1)
        assert [second.rendition_state(rid).state for rid in ids] == ["ready"] * 3
        assert second.renditions.backlog == 0
    finally:
        await second.stop_background()
        await second.close()


async def test_scrub_authenticates_renditions(api: Any) -> None:
    record = await api.upload(jpeg(700, 500))
    await api.service.renditions.drain()
    service = api.service
    admin = Principal("-", Role.ADMIN, "test-admin")
    assert (await service.verify_blobs(admin)).ok
    name = rendition_blob_id(record["id"], "thumbnail")
    blob = bytearray(await service.backend.read(name, 0, 1 << 20))
    blob[-5] ^= 1
    await service.backend.delete(name)
    writer = await service.backend.open_writer(name)
    await writer.write(bytes(blob))
    await writer.commit()
    report = await service.verify_blobs(admin)
    assert report.corrupt == [name] and not report.ok
    # Served never; made again instead.
    answer = await get(api, record["id"], "thumbnail")
    assert answer.status == 409 and service.rendition_state(record["id"]).state == "queued"
    await service.renditions.drain()
    assert (await get(api, record["id"], "thumbnail")).status == 200


async def test_backfill_gives_older_records_their_renditions(api: Any) -> None:
    from vault.index import schema

    service = api.service
    old = [(await api.upload(jpeg(640, 480 + n)))["id"] for n in range(3)]
    mesh = (await api.upload(b"ply\nformat ascii 1.0\nend_header\n", content_type="model/ply"))["id"]
    for rid in [*old, mesh]:  # as if stored before renditions existed
        await service.index.write(lambda t, rid=rid: t.delete_key(schema.DB_JOBS, schema.rendition_job_key(decode_id(rid))))
    meta = await (await api.client.get(f"/v1/images/{old[0]}/metadata", headers=await api.headers())).json()
    assert "renditions" not in meta
    admin = Principal("-", Role.ADMIN, "test-admin")
    seen: list[tuple[int, int]] = []
    report = await service.backfill_renditions(admin, progress=lambda done, total: seen.append((done, total)))
    assert (report.queued_now, report.processed, report.ready, report.unavailable) == (4, 3, 3, 1)
    assert seen[-1] == (3, 3)
    assert (await get(api, old[1], "preview")).status == 200
    again = await service.backfill_renditions(admin)  # resumable: nothing left to do
    assert (again.queued_now, again.processed) == (0, 0)


async def test_backup_and_restore_carry_renditions(api: Any, store: str, tmp_path: Any) -> None:
    from tests.conftest import ESCROW_PASSPHRASE, make_config, make_escrow
    from vault.service import Vault

    if store != "fs":
        pytest.skip("the restore target is a filesystem store; the source store is covered by the fs case")
    service = api.service
    kept, lost = (await api.upload(jpeg(500, 400)))["id"], (await api.upload(jpeg(400, 500)))["id"]
    await service.renditions.drain()
    await service.backend.delete(rendition_blob_id(lost, "preview"))  # as if lost before the backup
    admin = Principal("-", Role.ADMIN, "test-admin")
    escrow = await make_escrow(service)
    await service.backup(admin, tmp_path / "backup")
    target = make_config(tmp_path / "restored")
    await Vault.restore(admin, target, tmp_path / "backup", escrow=escrow, escrow_passphrase=ESCROW_PASSPHRASE)
    restored = await Vault.open(target)
    try:
        clinician = Principal("clinic-a", Role.CLINICIAN, "test-clinician")
        handle = await restored.open_rendition(clinician, kept, "preview")
        assert webp_size(handle.data) == (500, 400)
        assert restored.rendition_state(lost).state == "queued"  # made again by the daemon
        assert (await restored.verify_blobs(admin)).ok
    finally:
        await restored.close()


async def test_a_job_over_the_memory_cap_fails_alone(config: Config, aiohttp_client: Any) -> None:
    """The decoder's cap is memory for the image, counted above its libraries (OpenCV and
    numpy alone map ~0.4 GB): at the smallest setting a small photograph still renders, and an
    image whose pixels need four times the cap fails with ``memory``."""
    service = await open_vault(config.with_overrides(rendition_memory=64 * 1024**2))
    try:
        api = Api(await aiohttp_client(create_app(service.config, vault=service)), service, {})
        out = io.BytesIO()
        Image.new("RGB", (8000, 8000), (120, 90, 80)).save(out, "PNG")  # 64 MP: 256 MB decoded
        big = await api.upload(out.getvalue(), content_type="image/png")
        small = await api.upload(jpeg(3000, 2000))  # DCT-scaled, then shrunk by OpenCV
        assert await service.renditions.drain() == 2
        big_state, small_state = service.rendition_state(big["id"]), service.rendition_state(small["id"])
        assert (big_state.state, big_state.reason) == ("failed", "memory")
        assert small_state.state == "ready"
        answer = await get(api, small["id"], "preview")
        assert answer.status == 200 and webp_size(await answer.read()) == (1280, 853)
        await api.client.close()
    finally:
        await service.close()
