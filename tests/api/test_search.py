"""Search by patient and facets, ordered by capture time, with paging that returns each match once."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import INDEXES, PATIENT_IDS, STORES, jpeg, sample_metadata


@pytest.fixture(params=INDEXES)
def index_engine(request):
    """The record core runs on both index engines (postgres with the fs store only)."""
    return request.param


@pytest.fixture(params=["fs"])
def store(request):
    """Search reads only the index, never a blob: the archive of 40 uploads per test runs on fs;
    the restart test (which reopens the whole service) runs on both stores."""
    return request.param


def at(minutes: int) -> str:
    return (datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def archive(api):
    """37 records over two patients, three lesions, two modalities, one tenant; 3 in another."""
    ids = {"all": [], "p0": [], "p1": [], "L-1": [], "dermo": [], "tagged": []}
    for i in range(37):
        patient = PATIENT_IDS[i % 2]
        lesion = f"L-{i % 3}"
        modality = "dermoscopic" if i % 4 else "clinical"
        tags = ["follow-up"] if i % 5 == 0 else []
        meta = sample_metadata(patient_id=patient, lesion_id=lesion, modality=modality, tags=tags,
                               captured_at=at((i * 7919) % 1000), session_id=f"S-{i // 10}")
        record = await api.upload(jpeg(f"image {i}".encode()), meta)
        ids["all"].append(record["id"])
        ids[f"p{i % 2}"].append(record["id"])
        if lesion == "L-1":
            ids["L-1"].append(record["id"])
        if modality == "dermoscopic":
            ids["dermo"].append(record["id"])
        if tags:
            ids["tagged"].append(record["id"])
    for i in range(3):
        await api.upload(jpeg(b"other"), sample_metadata(patient_id=PATIENT_IDS[0]), tenant="clinic-b")
    return ids


async def page_through(api, query, limit):
    seen, cursor, pages = [], None, 0
    while True:
        body = {**query, "limit": limit}
        if cursor:
            body["cursor"] = cursor
        response = await api.client.post("/v1/search", json=body, headers=await api.headers())
        assert response.status == 200
        page = await response.json()
        assert len(page["items"]) <= limit
        seen.extend(page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return seen, pages


def ordered(items):
    keys = [(r["captured_at"], r["id"]) for r in items]
    return keys == sorted(keys)


@pytest.mark.parametrize(
    "query, key",
    [
        ({}, "all"),
        ({"patient_id": PATIENT_IDS[0]}, "p0"),
        ({"patient_id": f" {PATIENT_IDS[0]}\u00a0"}, "p0"),  # the same id with white space around it
        ({"patient_id": PATIENT_IDS[1]}, "p1"),
        ({"lesion_id": "L-1"}, "L-1"),
        ({"modality": "dermoscopic"}, "dermo"),
        ({"tag": "follow-up"}, "tagged"),
    ],
)
@pytest.mark.parametrize("limit", [1, 4, 100])
async def test_paging_returns_every_match_exactly_once_in_capture_order(api, archive, query, key, limit):
    items, pages = await page_through(api, query, limit)
    assert sorted(r["id"] for r in items) == sorted(archive[key])
    assert len({r["id"] for r in items}) == len(items)
    assert ordered(items)
    assert all(r["tenant"] == "clinic-a" for r in items)


async def test_combined_filters_must_all_match(api, archive):
    items, _ = await page_through(api, {"patient_id": PATIENT_IDS[1], "lesion_id": "L-1", "modality": "dermoscopic"}, 3)
    expected = set(archive["p1"]) & set(archive["L-1"]) & set(archive["dermo"])
    assert {r["id"] for r in items} == expected
    assert all(r["patient_id"] == PATIENT_IDS[1] for r in items)


async def test_time_window_is_inclusive_from_and_exclusive_to(api, archive):
    everything, _ = await page_through(api, {}, 1000)
    times = sorted({r["captured_at"] for r in everything})
    low, high = times[5], times[20]
    items, _ = await page_through(api, {"captured_from": low, "captured_to": high}, 7)
    assert items and all(low <= r["captured_at"] < high for r in items)
    assert len(items) == sum(1 for r in everything if low <= r["captured_at"] < high)


async def test_unknown_patient_finds_nothing(api, archive):
    response = await api.client.post("/v1/search", json={"patient_id": "NOBODY"}, headers=await api.headers())
    assert await response.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("store", STORES, indirect=True)
async def test_search_results_survive_a_restart(api, archive, service):
    from tests.conftest import open_vault

    config = service.config
    await service.close()
    reopened = await open_vault(config)
    try:
        from vault.auth import Principal, Role
        from vault.search import parse_search

        page = await reopened.search(Principal("clinic-a", Role.CLINICIAN, "t"), parse_search({"patient_id": PATIENT_IDS[0], "limit": 1000}))
        assert sorted(r.id for r in page.items) == sorted(archive["p0"])
        assert all(r.metadata.patient_id == PATIENT_IDS[0] for r in page.items)
    finally:
        await reopened.close()


def dek_lookups(service, result):
    return service.metrics.registry.get_sample_value("imagevault_dek_cache_total", {"result": result}) or 0.0


async def test_a_timeline_decrypts_alike_with_a_cold_a_mixed_and_a_warm_dek_cache(api, archive, service):
    """The misses of a search are unwrapped in one batch with the wrapped keys read beside the
    records; hits come from the cache; either way every record opens to the same values."""
    from vault.auth import Principal, Role
    from vault.search import SearchQuery

    clinician = Principal("clinic-a", Role.CLINICIAN, "test")
    query = SearchQuery(patient_id=PATIENT_IDS[1])
    service.dek_cache.clear()
    hits, misses = dek_lookups(service, "hit"), dek_lookups(service, "miss")
    cold = await service.search(clinician, query)
    assert sorted(r.id for r in cold.items) == sorted(archive["p1"])
    assert all(r.metadata.patient_id == PATIENT_IDS[1] for r in cold.items)
    assert (dek_lookups(service, "hit") - hits, dek_lookups(service, "miss") - misses) == (0, len(cold.items))

    service.dek_cache.clear()
    for record in cold.items[::3]:  # some keys cached by single reads, the rest missing
        await service.get_record(clinician, record.id)
    hits, misses = dek_lookups(service, "hit"), dek_lookups(service, "miss")
    mixed = await service.search(clinician, query)
    cached = len(cold.items[::3])
    assert (dek_lookups(service, "hit") - hits, dek_lookups(service, "miss") - misses) == (cached, len(cold.items) - cached)

    warm = await service.search(clinician, query)
    assert cold.items == mixed.items == warm.items
