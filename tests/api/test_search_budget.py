"""Over HTTP: a search page may be short or empty and still carry a cursor when the scan budget ran
out; the event loop's lag and the entries walked per search are exported on /metrics."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.conftest import jpeg, make_config, sample_metadata
from vault.config import ConfigError, load_config
from vault.services.looplag import LoopLagProbe


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path / "data", search_scan_budget=3)


def at(minute: int) -> str:
    return f"2026-01-01T10:{minute:02d}:00Z"


async def test_an_exhausted_budget_gives_a_short_page_with_a_cursor(api):
    # Alternating (clinical, chest) and (dermoscopic, back): clinical-on-the-back is in neither
    # run of entries until the last record, so the walk must go through them, 3 entries a call.
    for i in range(12):
        clinical = i % 2 == 0
        await api.upload(jpeg(b"x%d" % i), sample_metadata(
            captured_at=at(i), modality="clinical" if clinical else "dermoscopic",
            body_site="chest" if clinical else "back"))
    last = await api.upload(jpeg(b"last"), sample_metadata(captured_at=at(30), modality="clinical", body_site="back"))
    headers = await api.headers()
    body: dict = {"modality": "clinical", "body_site": "back", "limit": 5}
    pages = []
    while True:
        response = await api.client.post("/v1/search", json=body, headers=headers)
        assert response.status == 200
        page = await response.json()
        pages.append(page)
        if page["next_cursor"] is None:
            break
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", page["next_cursor"])
        body["cursor"] = page["next_cursor"]
    assert pages[0]["items"] == [] and pages[0]["next_cursor"] is not None
    assert [r["id"] for p in pages for r in p["items"]] == [last["id"]]
    assert len(pages) > 3


async def test_event_loop_lag_and_search_walks_are_exported_on_metrics(api):
    await api.client.post("/v1/search", json={}, headers=await api.headers())
    for _ in range(200):  # the first lag sample is taken as the daemon starts; it takes 50 ms
        text = (await (await api.client.get("/metrics")).read()).decode()
        count = re.search(r"^imagevault_event_loop_lag_seconds_count(\{[^}]*\})? (\S+)$", text, re.MULTILINE)
        if count and float(count.group(2)) >= 1:
            break
        await asyncio.sleep(0.05)
    assert count and float(count.group(2)) >= 1
    assert count.group(1) is None  # no labels: nothing about a request or a person
    assert re.search(r"^imagevault_event_loop_lag_seconds_bucket\{le=\"0\.05\"\} ", text, re.MULTILINE)
    walks = re.search(r"^imagevault_search_entries_walked_count (\S+)$", text, re.MULTILINE)
    assert walks and float(walks.group(1)) >= 1


async def test_the_lag_probe_measures_a_blocked_loop():
    seen: list[float] = []
    probe = LoopLagProbe(seen.append, sleep=0.01)
    loop = asyncio.get_running_loop()
    loop.call_soon(time.sleep, 0.2)  # something holds the loop for 200 ms
    lag = await probe.sample()
    assert seen == [lag] and lag >= 0.15  # it cannot have run earlier than the block ended


def test_search_scan_budget_is_configurable_and_must_be_positive(tmp_path):
    assert load_config(data_dir=tmp_path, environ={}).search_scan_budget == 20000
    assert load_config(data_dir=tmp_path, environ={"IMAGEVAULT_SEARCH_SCAN_BUDGET": "500"}).search_scan_budget == 500
    with pytest.raises(ConfigError):
        load_config(data_dir=tmp_path, environ={"IMAGEVAULT_SEARCH_SCAN_BUDGET": "0"})
