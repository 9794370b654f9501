"""Bounded walks over index entries: the positions present under every one of several terms.

A *position* is the 24-byte suffix ``TIME || ID`` that ends every ``by_patient`` and
``by_facet`` key (``vault.index.schema``). A *term* is a sorted set of positions that can be
sought forward: one prefix (a facet value), or the union of a few (a patient during a shred
epoch, under two blind-index keys). A search asks for the positions in every term, in order.

``Walk`` finds them by leapfrogging: the term that lags seeks to the position the others have
reached, so each seek skips every position that cannot match, and the work done is bounded by
about twice the smallest term, whichever that is, without knowing the sizes in advance. A
researcher's ``{"modality": "clinical"}`` thus costs the research-consented records at most,
not the tenant's clinical ones.

A walk stops when it has landed on ``budget`` entries (``PrefixCursor.landed``), once it has
decided at least one position; ``decided`` then names the last position up to which every
position was decided (matched and yielded, or known absent from some term), and resuming strictly
after it neither skips nor repeats a match. A position that is only known to be absent can be a
position no record has: the predecessor of the next entry found, which is why ``decided`` is not
always an entry.

The resume position goes back to the caller in a cursor, so it must not tell the caller about
records it may not see. ``reveal`` names the term whose positions the caller may see (a
researcher's consent term): the resume position is then ``resume_after``, the last position of
that term already decided, never a position derived from another term's entries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from vault.index.schema import SUFFIX_LEN


class Term(Protocol):
    landed: int

    def seek(self, target: bytes) -> bytes | None:
        """The smallest position ``>= target`` in the term, or None when there is none."""


class UnionTerm:
    """Positions in any of several terms (each position is in at most one of them)."""

    def __init__(self, members: Sequence[Term]) -> None:
        self._members = list(members)

    @property
    def landed(self) -> int:
        return sum(m.landed for m in self._members)

    def seek(self, target: bytes) -> bytes | None:
        found = [p for m in self._members if (p := m.seek(target)) is not None]
        return min(found) if found else None


def predecessor(position: bytes) -> bytes | None:
    """The largest position before ``position`` (positions are fixed-width), or None."""
    value = int.from_bytes(position, "big")
    return (value - 1).to_bytes(SUFFIX_LEN, "big") if value else None


class Walk:
    """Iterate over the positions ``>= low`` present in every term, within ``budget`` entries."""

    def __init__(self, terms: Sequence[Term], low: bytes, budget: int, *, reveal: int | None = None) -> None:
        if not terms:
            raise ValueError("a walk needs at least one term")
        self._terms = list(terms)
        self._low = low
        self._budget = budget
        self._reveal = reveal
        self._revealed: bytes | None = None  # the last position the reveal term landed on
        self._revealed_decided: bytes | None = None
        self.decided: bytes | None = None  # every position <= this is decided
        self.exhausted = False  # no position is left to decide

    @property
    def resume_after(self) -> bytes | None:
        """Where the next call resumes (strictly after): ``decided``, or with ``reveal`` the last
        decided position of that term. None: nothing decided yet that may be shown."""
        return self.decided if self._reveal is None else self._revealed_decided

    @property
    def walked(self) -> int:
        """Index entries landed on so far."""
        return sum(t.landed for t in self._terms)

    def _progressed(self) -> bool:
        resume = self.resume_after
        return resume is not None and resume >= self._low

    def _note_revealed(self) -> None:
        # Every position the reveal term lands on is decided before it lands on the next one,
        # so looking after each step sees each of them.
        if self._revealed is not None and self.decided is not None and self._revealed <= self.decided:
            self._revealed_decided = self._revealed

    def __iter__(self) -> Iterator[bytes]:
        terms = self._terms
        count = len(terms)
        target = self._low
        agreeing = 0  # consecutive terms (round robin) found at ``target``
        turn = 0
        while True:
            if self.walked >= self._budget and self._progressed():
                return
            found = terms[turn].seek(target)
            if found is None:
                self.exhausted = True
                return
            if turn == self._reveal:
                self._revealed = found
            if found == target:
                agreeing += 1
            else:
                # Nothing between target and found is in this term, so nothing there matches.
                target = found
                agreeing = 1
                before = predecessor(found)
                if before is not None and (self.decided is None or before > self.decided):
                    self.decided = before
            if agreeing == count:
                self.decided = target
                self._note_revealed()
                yield target
                target = target + b"\x00"  # the first position after it
                agreeing = 0
            else:
                self._note_revealed()
            turn = (turn + 1) % count
