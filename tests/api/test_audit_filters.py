"""``GET /v1/audit`` filters: record_id, actor, since, until, combined with paging; bad values 400."""

from __future__ import annotations

import pytest

from tests.conftest import jpeg, sample_metadata


async def listing(api, query, role="auditor"):
    response = await api.client.get(f"/v1/audit?{query}", headers=await api.headers(role))
    assert response.status == 200, await response.text()
    return await response.json()


async def test_filters_select_by_record_actor_and_time_and_page_together(api, clock):
    clinician = await api.headers("clinician")
    first = (await api.upload(jpeg(b"one"), sample_metadata()))["id"]
    second = (await api.upload(jpeg(b"two"), sample_metadata()))["id"]
    for _ in range(3):
        await api.client.get(f"/v1/images/{first}/metadata", headers=clinician)
    await api.client.get(f"/v1/images/{second}/metadata", headers=await api.headers("dpo"))
    clock.advance(hours=2)
    later = clock().strftime("%Y-%m-%dT%H:%M:%SZ")
    clock.advance(seconds=1)
    await api.client.get(f"/v1/images/{first}/metadata", headers=await api.headers("dpo"))

    about_first = (await listing(api, f"record_id={first}"))["entries"]
    assert [(e["action"], e["actor"]["role"]) for e in about_first] == [("create", "clinician")] + [("read", "clinician")] * 3 + [("read", "dpo")]
    dpo_name = about_first[-1]["actor"]["name"]
    by_dpo = (await listing(api, f"actor={dpo_name}"))["entries"]
    assert [(e["action"], e["record_ids"]) for e in by_dpo] == [("read", [second]), ("read", [first])]
    assert [e["record_ids"] for e in (await listing(api, f"actor={dpo_name}&since={later}"))["entries"]] == [[first]]
    assert [e["record_ids"] for e in (await listing(api, f"actor={dpo_name}&until={later}"))["entries"]] == [[second]]

    # Paging through a filtered listing: two at a time, every entry once, in order.
    seen, after = [], 0
    while after is not None:
        page = await listing(api, f"record_id={first}&limit=2&after={after}")
        assert len(page["entries"]) <= 2
        seen += [e["seq"] for e in page["entries"]]
        after = page["next_after"]
    assert seen == [e["seq"] for e in about_first]
    # An empty range is no error, and the ends of time are valid bounds.
    assert (await listing(api, "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z"))["entries"] == []
    assert len((await listing(api, "since=0001-01-01T00:00:00%2B01:00&until=9999-12-31T23:59:59-01:00"))["entries"]) > 5
    # The admin filters the same way, across scopes.
    assert [e["seq"] for e in (await listing(api, f"record_id={first}", role="admin"))["entries"]] == seen


@pytest.mark.parametrize("query, field", [
    ("record_id=not-an-id", "record_id"),
    ("record_id=", "record_id"),
    ("actor=", "actor"),
    ("actor=" + "x" * 300, "actor"),
    ("since=yesterday", "since"),
    ("until=2026-01-01T00:00:00", "until"),  # no offset
    ("limit=0", "limit"),
])
async def test_bad_filters_are_400_with_the_field(api, query, field):
    response = await api.client.get(f"/v1/audit?{query}", headers=await api.headers("auditor"))
    body = await response.json()
    assert response.status == 400 and body["error"]["code"] == "invalid_request" and body["error"]["field"] == field
