"""The pre-wrapped data key pool: one KMS call per refill, each key used once, honest on outage."""

from __future__ import annotations

import asyncio

from vault.keys.keyring import LocalKeyring
from vault.keys.pool import DekPool


class CountingKeyring(LocalKeyring):
    """The real local keyring, counting wrap calls and exposing a failure count to the pool."""

    wrap_calls = 0
    failure_count = 0

    async def wrap_data_keys(self, deks):
        self.wrap_calls += 1
        return await super().wrap_data_keys(deks)

    def failures(self) -> int:
        return self.failure_count


def keyring(tmp_path) -> CountingKeyring:
    LocalKeyring.create(tmp_path / "keys")
    return CountingKeyring.open(tmp_path / "keys")


async def test_pool_hands_out_each_key_once_and_refills_in_one_call(tmp_path):
    provider = keyring(tmp_path)
    pool = DekPool(provider, size=64, low_water=16)
    seen = set()
    for _ in range(200):
        dek, wrapped = await pool.take()
        assert await provider.unwrap_data_key(wrapped) == dek
        assert dek not in seen
        seen.add(dek)
        await asyncio.sleep(0)  # let a refill land
    assert provider.wrap_calls <= 200 / 48 + 3
    await pool.close()


async def test_expired_entries_are_never_used(tmp_path):
    now = [0.0]
    provider = keyring(tmp_path)
    pool = DekPool(provider, size=8, low_water=2, max_age=30, clock=lambda: now[0])
    await pool.take()
    await asyncio.sleep(0.01)
    assert len(pool) == 8
    now[0] = 31.0
    calls = provider.wrap_calls
    await pool.take()
    assert provider.wrap_calls == calls + 1  # wrapped on demand, the stale entries dropped
    await pool.close()


async def test_a_kms_failure_discards_prewrapped_keys(tmp_path):
    provider = keyring(tmp_path)
    pool = DekPool(provider, size=8, low_water=2)
    await pool.take()
    await asyncio.sleep(0.01)
    assert len(pool) == 8
    provider.failure_count += 1
    calls = provider.wrap_calls
    await pool.take()
    assert provider.wrap_calls == calls + 1
    await pool.close()
