"""Console sessions kept in the index: every app (worker) over one index knows them, a sign-out in
one is effective in all, nothing in the index gives the credential, the id or the CSRF token,
a tampered row is refused; the idle timeout, lifetime and cap of the store over a real index."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.console.test_sessions import cookie_of, sign_in
from vault.api.app import create_app
from vault.api.keys import SESSIONS
from vault.api.sessions import COOKIE_NAME, CSRF_HEADER, SessionStore
from vault.auth import Principal, Role
from vault.cli.common import COMMAND_LINE
from vault.errors import Overloaded, Unauthorized
from vault.index import schema
from vault.index.integrity import IndexSeal
from vault.index.lmdb import Index


@pytest.fixture
def index(tmp_path: Path) -> Any:
    index = Index(tmp_path / "index", map_size=1 << 24)
    index.seal = IndexSeal(os.urandom(32))
    yield index
    index.close()


def store_over(index: Index, now: list[float], **limits: Any) -> SessionStore:
    settings = {"idle_timeout": 600, "lifetime": 3000, "max_sessions": 2, **limits}
    return SessionStore(**settings, clock=lambda: now[0], index=index)


PRINCIPAL = Principal("clinic-a", Role.CLINICIAN, "t")


def rows(index: Index) -> dict[bytes, bytes]:
    return dict(index.read(lambda txn: list(txn.scan_items(schema.DB_CONSOLE_SESSIONS, b""))))


async def test_store_idle_timeout_slides_in_steps_and_the_lifetime_is_absolute(index):
    now = [1_000_000.0]
    store = store_over(index, now)
    assert store.touch_interval == 60  # min(60 s, idle / 10)
    sid, _ = await store.start("ivt_x", PRINCIPAL)
    (key, first), = rows(index).items()
    assert key == schema.console_session_key(sid)
    now[0] += 59
    await store.find(sid)  # used within the touch interval: nothing written
    assert rows(index)[key] == first
    now[0] += 2
    assert (await store.find(sid)).last_used == now[0]  # older than the interval: rewritten
    assert rows(index)[key] != first
    now[0] += 600
    assert (await store.find(sid)).last_used == now[0]  # exactly the idle timeout: still alive
    now[0] += 601
    with pytest.raises(Unauthorized):
        await store.find(sid)
    assert rows(index) == {}  # and deleted
    started = now[0]
    sid, session = await store.start("ivt_x", PRINCIPAL)
    assert store.expires_at(session) == started + 3000
    while now[0] + 500 <= started + 3000:  # used every 500 s: alive until its lifetime ends
        now[0] += 500
        await store.find(sid)
    now[0] = started + 3001
    with pytest.raises(Unauthorized):
        await store.find(sid)


async def test_a_session_idles_out_within_the_touch_interval_of_the_timeout(index):
    # Used 59 s after the last write (not rewritten): it dies 600 s after that write, 541 s after
    # its last use: the documented granularity.
    now = [1_000_000.0]
    store = store_over(index, now)
    sid, _ = await store.start("ivt_x", PRINCIPAL)
    now[0] += 59
    await store.find(sid)
    now[0] += 542
    with pytest.raises(Unauthorized):
        await store.find(sid)


async def test_cap_counted_in_the_index_and_dead_rows_purged_to_make_room(index):
    now = [1_000_000.0]
    first, second = store_over(index, now), store_over(index, now)  # two workers, one index
    await first.start("ivt_x", PRINCIPAL)
    sid, _ = await second.start("ivt_x", PRINCIPAL)
    with pytest.raises(Overloaded):
        await first.start("ivt_x", PRINCIPAL)
    await first.end(sid)  # a sign-out in one worker frees a place in the other
    await second.start("ivt_x", PRINCIPAL)
    with pytest.raises(Overloaded):
        await second.start("ivt_x", PRINCIPAL)
    now[0] += 601  # both idle: purged to make room
    await first.start("ivt_x", PRINCIPAL)
    assert first.count() == second.count() == 1
    now[0] += 601
    assert await second.purge() == 1 and first.count() == 0


async def test_a_row_is_bound_to_its_key_its_cookie_and_its_times(index):
    now = [1_000_000.0]
    store = store_over(index, now)
    a, _ = await store.start("ivt_a", PRINCIPAL)
    b, _ = await store.start("ivt_b", PRINCIPAL)
    key_a, key_b = schema.console_session_key(a), schema.console_session_key(b)
    stored = rows(index)
    # b's value moved under a's key: fails its MAC (and could not be decrypted with a's cookie).
    index.write_sync(lambda txn: txn.put_bytes(schema.DB_CONSOLE_SESSIONS, key_a, stored[key_b]))
    with pytest.raises(Unauthorized):
        await store.find(a)
    assert key_a not in rows(index)  # a refused row is deleted
    # One bit of b's clear times changed (a longer life): refused too.
    raw = bytearray(stored[key_b])
    raw[1 + 32 + 15] ^= 1
    index.write_sync(lambda txn: txn.put_bytes(schema.DB_CONSOLE_SESSIONS, key_b, bytes(raw)))
    with pytest.raises(Unauthorized):
        await store.find(b)


async def test_two_apps_over_one_index_share_sessions_and_sign_out(api, aiohttp_client):
    """Two workers: separate applications (each its own session store, nothing shared in memory)
    over one index. Signed in on one, the cookie works on the other; signed out on the other,
    the first refuses it at once."""
    other = await aiohttp_client(create_app(api.service.config, vault=api.service))
    assert other.app[SESSIONS] is not api.client.app[SESSIONS]
    body = await (await sign_in(api.client, await api.token("auditor"))).json()
    cookie = {"Cookie": f"{COOKIE_NAME}={cookie_of(api.client)}"}
    seen = await other.get("/v1/session", headers=cookie)
    assert (await seen.json())["csrf_token"] == body["csrf_token"]
    assert (await other.get("/v1/audit", headers=cookie)).status == 200
    out = await other.delete("/v1/session", headers={**cookie, CSRF_HEADER: body["csrf_token"]})
    assert out.status == 204
    assert (await api.client.get("/v1/audit")).status == 401
    assert (await (await api.client.get("/v1/session")).json())["signed_in"] is False


async def test_a_session_survives_a_restart_of_the_app(api, aiohttp_client):
    await sign_in(api.client, await api.token("auditor"))
    cookie = {"Cookie": f"{COOKIE_NAME}={cookie_of(api.client)}"}
    await api.client.close()  # the first daemon's app is gone, its store with it
    restarted = await aiohttp_client(create_app(api.service.config, vault=api.service))
    assert (await restarted.get("/v1/audit", headers=cookie)).status == 200


async def test_the_index_file_holds_neither_token_nor_session_id_nor_csrf_token(api):
    token = await api.token("clinician")
    body = await (await sign_in(api.client, token)).json()
    session_id = cookie_of(api.client)
    assert (await api.client.get("/v1/session")).status == 200
    raw = (api.service.index.path / "data.mdb").read_bytes()
    assert api.service.index.read(lambda txn: txn.count(schema.DB_CONSOLE_SESSIONS)) == 1
    for secret in (token, session_id, body["csrf_token"]):
        assert secret.encode() not in raw
        assert secret[8:24].encode() not in raw  # nor a piece of one
    # The token is in the index only as its SHA-256 (the tokens database), never in clear.


async def test_a_tampered_row_is_refused_by_the_api_and_counted(api):
    await sign_in(api.client, await api.token("auditor"))
    key = schema.console_session_key(cookie_of(api.client))
    index = api.service.index
    raw = bytearray(index.read(lambda txn: txn.get_bytes(schema.DB_CONSOLE_SESSIONS, key)))
    raw[-1] ^= 1
    index.write_sync(lambda txn: txn.put_bytes(schema.DB_CONSOLE_SESSIONS, key, bytes(raw)))
    before = api.service.metrics.index_integrity_errors.labels("session")._value.get()
    assert (await api.client.get("/v1/audit")).status == 401
    assert api.service.metrics.index_integrity_errors.labels("session")._value.get() == before + 1


async def test_the_cap_answers_503_until_a_session_ends(api, aiohttp_client):
    client = await aiohttp_client(create_app(api.service.config.with_overrides(console_max_sessions=1),
                                             vault=api.service))
    first = await sign_in(client, await api.token("auditor"))
    assert first.status == 201
    csrf = (await first.json())["csrf_token"]
    cookie = {"Cookie": f"{COOKIE_NAME}={cookie_of(client)}"}
    client.session.cookie_jar.clear()
    refused = await sign_in(client, await api.token("auditor"))
    assert refused.status == 503 and (await refused.json())["error"]["code"] == "overloaded"
    assert (await client.delete("/v1/session", headers={**cookie, CSRF_HEADER: csrf})).status == 204
    assert (await sign_in(client, await api.token("auditor"))).status == 201


async def test_a_restore_drops_every_console_session(api, tmp_path):
    """A session signed out after a backup must not come back with its restore."""
    from tests.conftest import ESCROW_PASSPHRASE, make_config, make_escrow
    from vault.service import Vault

    await sign_in(api.client, await api.token("auditor"))
    await api.upload(b"\xff\xd8\xff\xe0" + b"z" * 64)
    escrow = await make_escrow(api.service)
    await api.service.backup(COMMAND_LINE, tmp_path / "backup")
    assert api.service.index.read(lambda t: t.count(schema.DB_CONSOLE_SESSIONS)) == 1
    target = make_config(tmp_path / "restored")
    await Vault.restore(COMMAND_LINE, target, tmp_path / "backup", escrow=escrow, escrow_passphrase=ESCROW_PASSPHRASE)
    restored = await Vault.open(target)
    try:
        assert restored.index.read(lambda t: t.count(schema.DB_CONSOLE_SESSIONS)) == 0
    finally:
        await restored.close()
