"""DekCache: a key whose record was dropped (shredded) during its unwrap is not cached."""

from __future__ import annotations

from vault.keys import cache as cache_module
from vault.keys.cache import DekCache

A, B = b"a" * 16, b"b" * 16


def test_put_since_a_generation_refuses_a_key_dropped_meanwhile():
    cache = DekCache()
    before = cache.generation
    cache.drop(A)  # the record was shredded while its key was being unwrapped
    cache.put(A, b"k" * 32, since=before)
    assert cache.get(A) is None
    cache.put(B, b"k" * 32, since=before)  # another record's drop does not matter
    assert cache.get(B) == b"k" * 32
    cache.put(A, b"k" * 32, since=cache.generation)  # unwrapped after the drop (re-created id)
    assert cache.get(A) == b"k" * 32


def test_forgotten_drops_make_older_puts_refused_never_accepted(monkeypatch):
    monkeypatch.setattr(cache_module, "_DROP_MEMORY", 4)
    cache = DekCache()
    before = cache.generation
    for n in range(6):
        cache.drop(bytes([n]) * 16)
    # A's drop was never recorded, but drops before it were forgotten: refuse rather than guess.
    cache.put(A, b"k" * 32, since=before)
    assert cache.get(A) is None
    cache.put(A, b"k" * 32, since=cache.generation)
    assert cache.get(A) == b"k" * 32


def test_put_without_since_is_unconditional_and_clear_forgets_everything():
    cache = DekCache()
    cache.drop(A)
    cache.put(A, b"k" * 32)
    assert cache.get(A) == b"k" * 32
    before = cache.generation
    cache.clear()
    cache.put(A, b"k" * 32, since=before)
    assert cache.get(A) is None


def test_a_derived_key_is_kept_with_its_dek_and_leaves_with_it_on_a_shred():
    calls = []

    def derive(dek: bytes, record_id: bytes) -> bytes:
        calls.append(record_id)
        return b"derived:" + dek

    cache = DekCache(max_size=8, ttl=60.0)
    cache.put(b"r1", b"k1")
    assert cache.derived(b"r1", b"k1", derive) == b"derived:k1"
    assert cache.derived(b"r1", b"k1", derive) == b"derived:k1"
    assert calls == [b"r1"]  # derived once, then kept
    cache.drop(b"r1")  # shredded: the derived key goes with the DEK
    assert cache.derived(b"r1", b"k1", derive) == b"derived:k1"
    assert calls == [b"r1", b"r1"]
    assert cache.derived(b"r1", b"k1", derive) == b"derived:k1"
    assert calls == [b"r1", b"r1", b"r1"]  # not cached again: no entry holds it


def test_a_derived_key_is_not_kept_for_another_dek_or_past_expiry():
    now = [0.0]
    cache = DekCache(max_size=8, ttl=10.0, clock=lambda: now[0])
    cache.put(b"r1", b"k1")
    assert cache.derived(b"r1", b"other", lambda d, r: b"x" + d) == b"xother"
    cache.put(b"r1", b"k2")  # a new DEK for the id (replaced entry): nothing derived carried over
    assert cache.derived(b"r1", b"k2", lambda d, r: b"y" + d) == b"yk2"
    now[0] = 11.0
    assert cache.derived(b"r1", b"k2", lambda d, r: b"z" + d) == b"zk2"  # expired: derived anew
    cache.clear()
    assert len(cache) == 0
