"""Three daemons, every one a writer, on one PostgreSQL index + one bucket + one Transit key:
writes seen at once everywhere, unwrapped keys dropped on every node by a shred, job leaders
elected by advisory locks and replaced when killed, erasure racing uploads, the database
restarted under load."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time

import aiohttp
import psycopg

from tests.conftest import PATIENT_IDS, random_image, sample_metadata, upload_body
from tests.infra.cluster import Cluster
from vault.services.leases import RETRY_SECONDS

TIMEOUT = aiohttp.ClientTimeout(total=60)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def upload(session: aiohttp.ClientSession, url: str, token: str, data: bytes, **meta: object) -> tuple[int, dict]:
    async with session.post(f"{url}/v1/images", data=upload_body(data, sample_metadata(**meta)),
                            headers=auth(token)) as response:
        return response.status, await response.json()


async def search(session: aiohttp.ClientSession, url: str, token: str, **query: object) -> list[dict]:
    items: list[dict] = []
    cursor = None
    while True:
        async with session.post(f"{url}/v1/search", json={**query, "limit": 1000, "cursor": cursor},
                                headers=auth(token)) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not exported"
    return float(match.group(1))


async def eventually(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.2)


async def test_a_write_on_one_node_is_read_and_searched_on_the_others_at_once(cluster: Cluster):
    token = cluster.token()
    a, b, c = cluster.urls
    data = random_image(70_000, 1)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        status, record = await upload(session, a, token, data, lesion_id="L-CLUSTER-1")
        assert status == 201, record
        async with session.get(f"{b}/v1/info") as response:
            assert (await response.json())["index"] == "postgres"
        for url in (b, c):  # no wait: the commit was acknowledged, so every node sees it
            async with session.get(f"{url}/v1/images/{record['id']}", headers=auth(token)) as response:
                assert response.status == 200 and await response.read() == data
            found = await search(session, url, token, lesion_id="L-CLUSTER-1")
            assert [item["id"] for item in found] == [record["id"]]
        async with session.patch(f"{b}/v1/images/{record['id']}/metadata", json={"lesion_id": "L-CLUSTER-2"},
                                 headers=auth(token)) as response:
            assert response.status == 200
        assert [i["id"] for i in await search(session, c, token, lesion_id="L-CLUSTER-2")] == [record["id"]]
        assert await search(session, a, token, lesion_id="L-CLUSTER-1") == []
        dpo = cluster.token("dpo", "dpo")
        async with session.delete(f"{c}/v1/images/{record['id']}?override=true&reason=test",
                                  headers=auth(dpo)) as response:
            assert response.status == 200
        async with session.get(f"{a}/v1/images/{record['id']}", headers=auth(token)) as response:
            assert response.status == 404
        auditor = cluster.token("auditor", "auditor")
        heads = set()
        for url in (a, b, c):
            async with session.get(f"{url}/v1/audit/verify", headers=auth(auditor)) as response:
                verified = await response.json()
                assert verified["ok"] is True, verified
                heads.add((verified["entries"], verified["head"]))
        assert len(heads) <= 3  # one chain; later entries (audit reads) may have landed between calls


async def test_a_shred_on_one_node_empties_the_key_caches_of_the_others(cluster: Cluster):
    token = cluster.token()
    dpo = cluster.token("dpo", "dpo")
    a, b, c = cluster.urls
    patient = PATIENT_IDS[1]
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        ids = []
        for n in range(3):
            status, record = await upload(session, b, token, random_image(5000, 10 + n), patient_id=patient)
            assert status == 201
            ids.append(record["id"])
        for url in (b, c):  # both cache the keys (B since the upload, C by reading)
            for record_id in ids:
                async with session.get(f"{url}/v1/images/{record_id}", headers=auth(token)) as response:
                    assert response.status == 200
            assert await metric(session, url, "imagevault_dek_cache_keys") >= 3
        async with session.post(f"{a}/v1/patients/erase", headers=auth(dpo),
                                json={"patient_id": patient, "reason": "art17", "override_retention": True}) as response:
            report = await response.json()
            assert response.status == 200 and report["shredded"] == 3, report
        # No request to B or C uses a key meanwhile: the announcement alone empties their caches.
        for url in (b, c):
            await eventually(lambda url=url: _is_zero(session, url), 5, "the shredded keys left the cache")
        for url in (b, c):
            for record_id in ids:
                async with session.get(f"{url}/v1/images/{record_id}", headers=auth(token)) as response:
                    assert response.status == 404
            assert await search(session, url, token, patient_id=patient) == []


async def _is_zero(session: aiohttp.ClientSession, url: str) -> bool:
    return await metric(session, url, "imagevault_dek_cache_keys") == 0


def _leader(cluster: Cluster, job: str) -> int | None:
    for n in range(len(cluster.nodes)):
        text = cluster.log_text(n)
        if f"runs the {job} job" in text or f"took over the {job} job" in text:
            return n
    return None


def _advisory_holders(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT a.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'imagevault-jobs' "
            "AND a.datname = current_database()").fetchone()
    return int(row[0])


async def test_a_killed_job_leader_is_replaced_by_another_node(cluster: Cluster):
    async def leader_known() -> list[int]:
        found = _leader(cluster, "audit-witness")
        return [] if found is None else [found]

    [leader] = await eventually(leader_known, 20, "a node leads the audit witness")
    others = [n for n in range(3) if n != leader]
    for n in others:  # exactly one node witnesses
        assert "runs the audit-witness job" not in cluster.log_text(n)
        assert "audit head seq=" not in cluster.log_text(n)
    assert _advisory_holders(cluster.settings.postgres_dsn) == 1  # one node holds every job's lock
    token = cluster.token()
    cluster.kill(leader)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        status, _ = await upload(session, cluster.node(others[0]).url, token, random_image(3000, 5))
        assert status == 201  # a new audit entry: the new witness has a new head to publish

    async def taken_over() -> list[int]:
        return [n for n in others if "took over the audit-witness job" in cluster.log_text(n)]

    started = time.monotonic()
    successors = await eventually(taken_over, RETRY_SECONDS * 3, "another node took over")
    assert len(successors) == 1
    assert time.monotonic() - started < RETRY_SECONDS * 3
    successor = successors[0]

    async def witnessed() -> bool:
        return "audit head seq=" in cluster.log_text(successor)

    await eventually(witnessed, 10, "the successor publishes the audit head")
    for n in others:
        if n != successor:
            assert "audit head seq=" not in cluster.log_text(n)
    # The killed node comes back as a follower: the successor keeps its jobs.
    cluster.start(leader)
    await asyncio.sleep(RETRY_SECONDS + 1)
    assert "runs the audit-witness job" not in cluster.log_text(leader)
    assert "took over the audit-witness job" not in cluster.log_text(leader)


async def test_erasure_on_one_node_racing_uploads_on_another_ends_consistent(cluster: Cluster):
    token = cluster.token()
    dpo = cluster.token("dpo", "dpo")
    a, b, c = cluster.urls
    patient = PATIENT_IDS[2]
    payloads: dict[str, str] = {}
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for n in range(8):
            data = random_image(20_000, 100 + n)
            status, record = await upload(session, b, token, data, patient_id=patient)
            assert status == 201
            payloads[record["id"]] = hashlib.sha256(data).hexdigest()

        async def uploads() -> None:
            for n in range(24):
                data = random_image(20_000, 200 + n)
                status, record = await upload(session, b, token, data, patient_id=patient)
                assert status == 201, record
                payloads[record["id"]] = hashlib.sha256(data).hexdigest()

        async def erasures() -> list[int]:
            shredded = []
            for _ in range(3):
                await asyncio.sleep(0.3)
                async with session.post(f"{a}/v1/patients/erase", headers=auth(dpo),
                                        json={"patient_id": patient, "reason": "art17",
                                              "override_retention": True}) as response:
                    report = await response.json()
                    assert response.status == 200 and report["refused"] == [], report
                    shredded.append(report["shredded"])
            return shredded

        _, shredded = await asyncio.gather(uploads(), erasures())
        remaining = {item["id"] for item in await search(session, c, token, patient_id=patient)}
        readable = set()
        for record_id, digest in payloads.items():
            async with session.get(f"{c}/v1/images/{record_id}", headers=auth(token)) as response:
                body = await response.read()
                if response.status == 200:
                    assert hashlib.sha256(body).hexdigest() == digest  # fully readable ...
                    readable.add(record_id)
                else:
                    assert response.status == 404, body  # ... or gone: nothing in between
            async with session.get(f"{a}/v1/images/{record_id}/metadata", headers=auth(token)) as response:
                assert response.status == (200 if record_id in readable else 404)
        assert remaining == readable
        assert sum(shredded) + len(readable) == len(payloads)  # each report counted exactly its shreds
        assert sum(shredded) >= 8


async def test_postgresql_restarted_under_load_gives_503_then_every_node_recovers(make_cluster, private_postgres):
    cluster = make_cluster(pg=private_postgres)
    token = cluster.token()
    acked: dict[str, str] = {}
    statuses: dict[int, int] = {}
    retry_after: set[str] = set()
    stop = asyncio.Event()

    async def load(session: aiohttp.ClientSession, url: str, seed: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            data = random_image(8000, seed * 10_000 + n)
            try:
                async with session.post(f"{url}/v1/images", data=upload_body(data, sample_metadata()),
                                        headers=auth(token)) as response:
                    body = await response.json()
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    if response.status == 201:
                        acked[body["id"]] = hashlib.sha256(data).hexdigest()
                    elif response.status == 503:
                        assert body["error"]["code"] == "index_unavailable", body
                        retry_after.add(response.headers.get("Retry-After", ""))
                    else:
                        raise AssertionError(body)
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        tasks = [asyncio.ensure_future(load(session, url, i)) for i, url in enumerate(cluster.urls)]
        await asyncio.sleep(2)
        private_postgres.stop()
        await asyncio.sleep(4)
        during = dict(statuses)
        private_postgres.start()
        before = len(acked)

        async def all_recovered() -> bool:
            return len(acked) > before + 6

        await eventually(all_recovered, 60, "uploads succeed again")
        stop.set()
        await asyncio.gather(*tasks)
        assert during.get(503, 0) > 0 and retry_after and "" not in retry_after
        for url in cluster.urls:  # every node, none restarted, serves reads and writes again
            async def ready(url: str = url) -> bool:
                # Readiness is re-checked every readiness_interval, and a node whose read pool
                # met the dead connections waits out its reconnect backoff: ready within seconds.
                async with session.get(f"{url}/readyz") as response:
                    return response.status == 200

            await eventually(ready, 15, f"{url} ready again")
            status, _ = await upload(session, url, token, random_image(3000, 77))
            assert status == 201
        for record_id, digest in acked.items():
            async with session.get(f"{cluster.urls[1]}/v1/images/{record_id}", headers=auth(token)) as response:
                assert response.status == 200 and hashlib.sha256(await response.read()).hexdigest() == digest
    assert all(node is not None and node.process.poll() is None for node in cluster.nodes)



async def test_nodes_of_two_workers_each_share_one_job_leader_and_drop_shredded_keys_in_every_worker(make_cluster):
    # Two nodes, each ``serve --workers 2``: four processes with a cache of their own each.
    cluster = make_cluster(2, workers=2)
    token = cluster.token()
    dpo = cluster.token("dpo", "dpo")
    a, b = cluster.urls
    patient = PATIENT_IDS[2]

    async def leaders() -> int:
        return _advisory_holders(cluster.settings.postgres_dsn)

    await eventually(leaders, 20, "a job leader")
    assert _advisory_holders(cluster.settings.postgres_dsn) == 1  # one of four processes leads
    # A new connection per request: the kernel hands each to whichever worker accepts first.
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=aiohttp.TCPConnector(force_close=True)) as session:
        ids = []
        for n in range(3):
            status, record = await upload(session, a, token, random_image(4000, 30 + n), patient_id=patient)
            assert status == 201
            ids.append(record["id"])
        for _ in range(4):  # both workers of B see (and cache) the keys written through A
            for record_id in ids:
                async with session.get(f"{b}/v1/images/{record_id}", headers=auth(token)) as response:
                    assert response.status == 200
            assert len(await search(session, b, token, patient_id=patient)) == 3
        assert await metric(session, b, "imagevault_dek_cache_keys") >= 3
        async with session.post(f"{a}/v1/patients/erase", headers=auth(dpo),
                                json={"patient_id": patient, "reason": "art17", "override_retention": True}) as response:
            report = await response.json()
            assert response.status == 200 and report["shredded"] == 3, report
        # The sum over B's workers falls to 0 with no request to B: every worker followed the NOTIFY.
        await eventually(lambda: _is_zero(session, b), 5, "every worker of B dropped the shredded keys")
        for _ in range(2):
            for record_id in ids:
                async with session.get(f"{b}/v1/images/{record_id}", headers=auth(token)) as response:
                    assert response.status == 404
    assert cluster.log_text(0).count("runs the audit-witness job") + cluster.log_text(1).count("runs the audit-witness job") == 1
