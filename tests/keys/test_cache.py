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
