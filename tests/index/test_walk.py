"""Leapfrog walks over sorted terms: exactly the intersection, in order, resumable within a budget."""

from __future__ import annotations

import bisect
import random

import pytest

from vault.index.schema import SUFFIX_LEN
from vault.index.walk import UnionTerm, Walk, predecessor


class ListTerm:
    """A term over a sorted list of positions, counting the positions it lands on."""

    def __init__(self, positions: list[bytes]) -> None:
        self._positions = sorted(positions)
        self._at = -1
        self.landed = 0

    def seek(self, target: bytes) -> bytes | None:
        if self._at >= 0 and self._at < len(self._positions) and self._positions[self._at] >= target:
            return self._positions[self._at]
        self._at = bisect.bisect_left(self._positions, target)
        if self._at == len(self._positions):
            return None
        self.landed += 1
        return self._positions[self._at]


def position(n: int) -> bytes:
    return n.to_bytes(SUFFIX_LEN, "big")


def sets(seed: int) -> list[set[int]]:
    rng = random.Random(seed)
    universe = range(1, 3000)
    return [
        {n for n in universe if n % 2 == 0},
        {n for n in universe if rng.random() < 0.3},
        {n for n in universe if n % 3 != 1},
    ]


def walk_all(members: list[set[int]], budget: int, low: bytes = b"", reveal: int | None = None,
             resumed_at: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Page through with fresh terms per call, as search does; (matches, walked per call)."""
    out: list[int] = []
    walked: list[int] = []
    while True:
        walk = Walk([ListTerm([position(n) for n in m]) for m in members], low, budget, reveal=reveal)
        out.extend(int.from_bytes(p, "big") for p in walk)
        walked.append(walk.walked)
        if walk.exhausted:
            return out, walked
        assert walk.resume_after is not None
        if resumed_at is not None:
            resumed_at.append(int.from_bytes(walk.resume_after, "big"))
        low = walk.resume_after + b"\x00"


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("budget", [1, 3, 17, 10_000])
def test_paging_a_walk_yields_the_intersection_once_in_order(count, budget):
    members = sets(count)[:count]
    expected = sorted(set.intersection(*members))
    found, walked = walk_all(members, budget)
    assert found == expected
    assert all(w <= budget + count for w in walked)  # the budget, plus the seeks to decide one position


@pytest.mark.parametrize("budget", [1, 2, 5, 40])
def test_with_reveal_every_resume_position_is_one_of_that_terms_positions(budget):
    # The second term stands for a researcher's consent entries: a cursor must never be derived
    # from the positions of the others (records the researcher may not see).
    members = sets(7)
    resumed_at: list[int] = []
    found, walked = walk_all(members, budget, reveal=1, resumed_at=resumed_at)
    assert found == sorted(set.intersection(*members))
    assert resumed_at and set(resumed_at) <= members[1]
    assert all(w <= budget + 2 * len(members) for w in walked)


def test_a_walk_costs_about_twice_its_smallest_term_not_its_largest():
    large = set(range(1, 100_000))
    small = set(range(5, 100_000, 997))
    walk = Walk([ListTerm([position(n) for n in large]), ListTerm([position(n) for n in small])], b"", 10**9)
    assert [int.from_bytes(p, "big") for p in walk] == sorted(small)
    assert walk.walked <= 2 * len(small) + 2


def test_an_empty_term_ends_the_walk_at_once():
    walk = Walk([ListTerm([position(n) for n in range(1, 1000)]), ListTerm([])], b"", 10)
    assert list(walk) == [] and walk.exhausted and walk.walked <= 1


def test_a_union_term_holds_the_positions_of_every_member():
    found: list[int] = []
    low = b""
    while True:  # budget 1: one position per call at most
        union = UnionTerm([ListTerm([position(n) for n in (1, 5, 9)]), ListTerm([position(n) for n in (2, 6)])])
        other = ListTerm([position(n) for n in range(1, 10)])
        walk = Walk([union, other], low, 1)
        found.extend(int.from_bytes(p, "big") for p in walk)
        if walk.exhausted:
            break
        low = walk.decided + b"\x00"
    assert found == [1, 2, 5, 6, 9]


def test_decided_never_passes_an_undecided_position():
    # Term A has 10 and 20, term B has 20: after landing on A's 10 and B's 20, everything
    # before 20 is decided, 20 itself is not until A confirms it.
    a = ListTerm([position(10), position(20)])
    b = ListTerm([position(20)])
    walk = Walk([a, b], b"", 2)
    assert list(walk) == []
    assert walk.decided == position(19) and not walk.exhausted
    resumed = Walk([ListTerm([position(10), position(20)]), ListTerm([position(20)])], walk.decided + b"\x00", 100)
    assert list(resumed) == [position(20)]


def test_predecessor_of_fixed_width_positions():
    assert predecessor(position(256)) == position(255)
    assert predecessor(position(0)) is None
