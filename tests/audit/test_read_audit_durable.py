"""A read is answered only after its audit entry is durable, however the entries are batched.

Read audits are group-committed with every other entry (one LMDB commit, one pair of flushes
for all appends queued meanwhile). These tests hold the audit environment's write lock from
another process, so no commit can finish, and check that a download and a search do not
complete until the lock is released; then that the entries are there.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

from tests.conftest import PATIENT_IDS, random_image

# Another process takes the audit environment's LMDB write lock (a write transaction in our
# own Index) and holds it until told to let go: the daemon's commits wait for that lock.
_HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vault.index.lmdb import Index

    index = Index(Path(sys.argv[1]), map_size=int(sys.argv[2]), databases=(b"entries", b"head", b"by_record"))

    def hold(txn):
        print("held", flush=True)
        sys.stdin.readline()

    index.write_sync(hold)
    index.close()
""")


def _hold_audit_lock(api) -> subprocess.Popen[str]:
    """Blocks until the other process holds the lock (nothing else runs on the loop yet)."""
    config = api.service.config
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(config.audit_dir), str(config.lmdb_map_size)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _release(holder: subprocess.Popen[str]) -> None:
    holder.stdin.write("go\n")
    holder.stdin.flush()
    holder.wait(timeout=30)


async def test_download_and_search_wait_for_their_audit_entries_to_be_durable(api):
    data = random_image(3 << 20, seed=3)
    record = await api.upload(data)
    headers = await api.headers()
    before = api.service.audit.count()
    holder = _hold_audit_lock(api)
    try:
        download = asyncio.ensure_future(api.client.get(f"/v1/images/{record['id']}", headers=headers))
        search = asyncio.ensure_future(api.client.post("/v1/search", json={"patient_id": PATIENT_IDS[0]}, headers=headers))
        done, _ = await asyncio.wait({download, search}, timeout=1.5)
        assert not done, "a read was answered while its audit entry could not be committed"
        assert api.service.audit.count() == before
    finally:
        _release(holder)
    response = await download
    assert response.status == 200 and await response.read() == data
    found = await search
    assert found.status == 200
    assert api.service.audit.count() == before + 2
    actions = [e.event.action for e in api.service.audit.page(before, 10).entries]
    assert sorted(actions) == ["read", "search"]
