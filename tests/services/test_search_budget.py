"""Bounded search: a call walks at most ``search_scan_budget`` index entries, paging resumes exactly
where the walk stopped, a researcher walks only research-consented entries, and the walk runs on
a reader thread while the event loop serves others.

Counts, not times: entries walked come from the walk itself (``SearchPage.walked``), and "off the
loop" is shown by the event loop observing a reader thread's read while it runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import make_config, open_vault
from tests.infra.bulk import fill_records, record_metadata
from vault.auth import Principal, Role
from vault.ids import encode_id
from vault.search import parse_search

TENANT = "clinic-a"
CLINICIAN = Principal(TENANT, Role.CLINICIAN, "clinician")
RESEARCHER = Principal(TENANT, Role.RESEARCHER, "researcher")
DPO = Principal(TENANT, Role.DPO, "dpo")


def mixed(number: int) -> dict[str, Any]:
    """Interleaved so that two facets are disjoint: even records are clinical on the back, odd
    ones dermoscopic on the chest; every 7th is tagged, every 50th consented for research."""
    return record_metadata(
        number,
        modality="clinical" if number % 2 == 0 else "dermoscopic",
        body_site="upper_back" if number % 2 == 0 else "chest",
        tags=["follow-up"] if number % 7 == 0 else [],
        consent={"research": number % 50 == 0},
    )


async def open_with(tmp_path, **settings: Any):
    return await open_vault(make_config(tmp_path / "data", lmdb_map_size=64 << 20, **settings))


async def page_through(vault, principal: Principal, query: dict[str, Any], *, between=None) -> tuple[list[str], list[int]]:
    """Every item id over all pages, and the entries each call walked."""
    ids: list[str] = []
    walked: list[int] = []
    cursor = None
    while True:
        page = await vault.search(principal, parse_search({**query, "cursor": cursor}))
        ids.extend(r.id for r in page.items)
        walked.append(page.walked)
        cursor = page.next_cursor
        if cursor is None:
            return ids, walked
        if between is not None:
            await between(ids)


def expected_ids(rids: list[bytes], numbers) -> list[str]:
    return [encode_id(rids[n]) for n in numbers]


async def test_a_call_walks_at_most_the_budget_and_resumes_with_a_cursor(tmp_path):
    vault = await open_with(tmp_path, search_scan_budget=40)
    try:
        rids = await fill_records(vault, 2000, tenant=TENANT, metadata_for=mixed)
        # Two disjoint facets, interleaved: a walk can only go through them, never skip ahead.
        ids, walked = await page_through(vault, CLINICIAN, {"modality": "clinical", "body_site": "chest"})
        assert ids == []
        assert len(walked) > 10 and max(walked) <= 40 + 2
        assert sum(walked) >= 1990  # (nearly) every entry of both terms, over many calls
        first = await vault.search(CLINICIAN, parse_search({"modality": "clinical", "body_site": "chest"}))
        assert first.items == [] and first.next_cursor is not None  # an empty page that goes on
        # A query with matches: short pages, every match once, in order.
        ids, walked = await page_through(vault, CLINICIAN, {"modality": "clinical", "tag": "follow-up", "limit": 1000})
        assert ids == expected_ids(rids, [n for n in range(2000) if n % 14 == 0])
        assert max(walked) <= 40 + 2
    finally:
        await vault.close()


@pytest.mark.parametrize("query, wanted", [
    ({}, lambda n: True),
    ({"modality": "dermoscopic"}, lambda n: n % 2 == 1),
    ({"tag": "follow-up", "body_site": "upper_back"}, lambda n: n % 14 == 0),
    ({"patient_id": "P-0000031", "modality": "clinical"}, lambda n: n // 20 == 31 and n % 2 == 0),
    ({"captured_from": "2024-01-01T05:00:00Z", "captured_to": "2024-01-01T10:00:00Z", "tag": "follow-up"},
     lambda n: 300 <= n < 600 and n % 7 == 0),
])
async def test_paging_with_a_tiny_budget_returns_exactly_the_full_result(tmp_path, query, wanted):
    vault = await open_with(tmp_path, search_scan_budget=3)
    try:
        rids = await fill_records(vault, 700, tenant=TENANT, metadata_for=mixed)
        ids, walked = await page_through(vault, CLINICIAN, {**query, "limit": 4})
        assert ids == expected_ids(rids, [n for n in range(700) if wanted(n)])
        assert max(walked) <= 3 + 2
    finally:
        await vault.close()


async def test_paging_across_shredding_neither_skips_nor_repeats(tmp_path):
    vault = await open_with(tmp_path, search_scan_budget=5)
    try:
        rids = await fill_records(vault, 600, tenant=TENANT, metadata_for=mixed)
        matching = [n for n in range(600) if n % 2 == 0]
        shredded: set[int] = set()

        async def shred_some(seen: list[str]) -> None:
            # Between pages: shred one record already returned and one still ahead.
            returned = [n for n in matching if encode_id(rids[n]) in seen and n not in shredded]
            ahead = [n for n in matching if encode_id(rids[n]) not in seen and n not in shredded]
            for n in (returned[-1:] + ahead[len(ahead) // 2:len(ahead) // 2 + 1]):
                await vault.shred_record(DPO, encode_id(rids[n]), reason="test", override=True)
                shredded.add(n)

        ids, _ = await page_through(vault, CLINICIAN, {"modality": "clinical", "limit": 7}, between=shred_some)
        assert len(ids) == len(set(ids))
        shredded_ahead = {encode_id(rids[n]) for n in shredded} - set(ids)
        assert shredded_ahead, "some records were shredded before the walk reached them"
        assert set(ids) | shredded_ahead == {encode_id(rids[n]) for n in matching}
        assert ids == [encode_id(rids[n]) for n in matching if encode_id(rids[n]) in set(ids)]  # in order
    finally:
        await vault.close()


async def test_a_researcher_walks_the_research_consented_entries_only(tmp_path):
    vault = await open_with(tmp_path)
    try:
        rids = await fill_records(vault, 3000, tenant=TENANT, metadata_for=mixed)
        consented = [n for n in range(3000) if n % 50 == 0]  # all of them clinical (even)
        everything = await vault.search(RESEARCHER, parse_search({"limit": 1000}))
        assert [r.id for r in everything.items] == expected_ids(rids, consented)
        assert everything.walked == len(consented)
        clinical = await vault.search(RESEARCHER, parse_search({"modality": "clinical", "limit": 1000}))
        assert [r.id for r in clinical.items] == expected_ids(rids, consented)
        assert clinical.walked <= 2 * len(consented) + 2  # not the 1,500 clinical records
        none = await vault.search(RESEARCHER, parse_search({"modality": "dermoscopic"}))
        assert none.items == [] and none.next_cursor is None and none.walked <= 2 * len(consented) + 2
    finally:
        await vault.close()


async def test_a_researcher_search_with_no_consented_record_walks_nothing(tmp_path):
    vault = await open_with(tmp_path)
    try:
        await fill_records(vault, 1000, tenant=TENANT)  # no consent for research
        page = await vault.search(RESEARCHER, parse_search({"modality": "clinical"}))
        assert page.items == [] and page.next_cursor is None and page.walked <= 1
    finally:
        await vault.close()


async def test_consent_withdrawn_or_given_changes_what_a_researcher_walks(tmp_path):
    vault = await open_with(tmp_path)
    try:
        rids = await fill_records(vault, 200, tenant=TENANT)
        await vault.update_metadata(CLINICIAN, encode_id(rids[17]), {"consent": {"research": True}})
        page = await vault.search(RESEARCHER, parse_search({"modality": "clinical"}))
        assert [r.id for r in page.items] == [encode_id(rids[17])]
        await vault.update_metadata(CLINICIAN, encode_id(rids[17]), {"consent": {"research": False}})
        page = await vault.search(RESEARCHER, parse_search({"modality": "clinical"}))
        assert page.items == [] and page.walked <= 1
    finally:
        await vault.close()


async def test_the_walk_runs_on_a_reader_thread_while_the_loop_serves_others(tmp_path):
    # One call walks ~30,000 entries (two disjoint, interleaved facets). A coroutine on the
    # event loop counts the turns it gets while a read is running on a reader thread: if the
    # walk ran on the loop, no other coroutine could run before it ended, and the count is 0.
    vault = await open_with(tmp_path, search_scan_budget=10**6)
    try:
        await fill_records(vault, 30_000, tenant=TENANT, metadata_for=mixed)
        turns_during_read = 0
        done = False

        async def other_request() -> None:
            nonlocal turns_during_read
            while not done:
                if vault.index.reads_off_loop:
                    turns_during_read += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other_request())
        page = await vault.search(CLINICIAN, parse_search({"modality": "clinical", "body_site": "chest"}))
        done = True
        await task
        assert page.items == [] and page.next_cursor is None and page.walked >= 29_000
        assert turns_during_read > 0
    finally:
        await vault.close()


async def test_a_researchers_cursor_names_only_research_consented_records(tmp_path):
    # A walk that stops on its budget resumes after the last position it decided; for a
    # researcher that position must be a consented record's, never one derived from the other
    # filters' entries (records the researcher may not know exist).
    from vault.index import schema
    from vault.search import decode_cursor

    vault = await open_with(tmp_path, search_scan_budget=3)
    try:
        rids = await fill_records(vault, 1500, tenant=TENANT, metadata_for=mixed)
        consented = {rids[n]: n for n in range(1500) if n % 50 == 0}
        cursors = []
        for query in ({"modality": "dermoscopic"}, {"modality": "clinical", "tag": "follow-up"}):
            cursor = None
            while True:
                page = await vault.search(RESEARCHER, parse_search({**query, "cursor": cursor, "limit": 2}))
                cursor = page.next_cursor
                if cursor is None:
                    break
                cursors.append(decode_cursor(cursor))
        assert len(cursors) > 10
        for raw in cursors:
            rid = schema.record_id_of(raw)
            assert rid in consented
            number = consented[rid]
            assert raw == schema.encode_time(parse_search({"captured_from": record_metadata(number)["captured_at"]})
                                             .captured_from) + rid
    finally:
        await vault.close()


async def test_a_walk_too_long_for_the_loop_gives_the_same_pages_from_a_reader_thread(tmp_path):
    # A walk first runs on the loop within INLINE_WALK entries; one that needs more starts over
    # on a reader thread. Pages, cursors and walked counts must be those of one whole walk.
    from vault.services.search import INLINE_WALK

    vault = await open_with(tmp_path, search_scan_budget=300)
    try:
        rids = await fill_records(vault, 1200, tenant=TENANT, metadata_for=mixed)
        ids, walked = await page_through(vault, CLINICIAN, {"modality": "clinical", "tag": "follow-up", "limit": 1000})
        assert ids == expected_ids(rids, [n for n in range(1200) if n % 14 == 0])
        assert max(walked) > INLINE_WALK  # the reader thread's walks, each over the inline budget
        short = await vault.search(CLINICIAN, parse_search({"modality": "clinical", "tag": "follow-up", "limit": 3}))
        assert [r.id for r in short.items] == expected_ids(rids, [0, 14, 28]) and short.next_cursor is not None
        assert short.walked <= INLINE_WALK  # a page filled early never left the loop
    finally:
        await vault.close()
