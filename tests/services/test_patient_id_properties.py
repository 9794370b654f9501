"""Property tests of the patient-id schemes through the real service (Hypothesis).

For each scheme, pairs of generated ids are uploaded into a tenant of their own and searched:
two ids whose normal forms under the scheme differ never share a blind-index entry (each search
finds only its own record), and ids with equal normal forms always do. The normal forms are
written here again, from the scheme definitions of docs/config.md, rather than imported.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.conftest import make_config, open_vault, png, sample_metadata
from vault.auth import Principal, Role
from vault.ids import decode_id
from vault.metadata import WHITE_SPACE, is_text, parse_metadata
from vault.search import SearchQuery
from vault.service import Vault

TENANTS = itertools.count()


def exact_oracle(patient_id: str) -> str:
    return unicodedata.normalize("NFC", patient_id).strip(WHITE_SPACE)


def nhs_oracle(patient_id: str) -> str:
    return "".join(c for c in patient_id if c not in "- " and not c.isspace())


def legacy_oracle(patient_id: str) -> str:
    return re.sub(r"[\s-]", "", patient_id).casefold()


ORACLES = {"exact": exact_oracle, "nhs": nhs_oracle, "legacy": legacy_oracle}


# ids ---------------------------------------------------------------------------------------
# Letters that case-fold or compose interestingly, digits, separators and white space.
_ALPHABET = st.sampled_from(list("abAB12-  ßSsKkİıÅåé") + ["e\u0301", "A\u030a", "\u212b", "\u00a0", "\u3000", "\ufeff"])
_ANY = st.characters(exclude_categories=("Cs", "Cc"))


def _spaced(draw: st.DrawFn, text: str, separators: str) -> str:
    """``text`` with separators inserted at drawn positions."""
    out = []
    for char in text:
        if draw(st.booleans()) and draw(st.booleans()):
            out.append(draw(st.sampled_from(separators)))
        out.append(char)
    return "".join(out)


@st.composite
def free_text_pair(draw: st.DrawFn) -> tuple[str, str]:
    """Two patient ids: the second a variant of the first (case, composition, separators,
    surrounding white space) or another id altogether."""
    first = "".join(draw(st.lists(st.one_of(_ALPHABET, _ANY), min_size=1, max_size=12)))
    kind = draw(st.sampled_from(["trim", "nfd", "case", "separators", "other", "same"]))
    if kind == "trim":
        pad = st.text(st.sampled_from(WHITE_SPACE), max_size=3)
        second = draw(pad) + first + draw(pad)
    elif kind == "nfd":
        second = unicodedata.normalize(draw(st.sampled_from(["NFD", "NFC"])), first)
    elif kind == "case":
        second = draw(st.sampled_from([first.upper(), first.lower(), first.swapcase(), first.casefold()]))
    elif kind == "separators":
        second = _spaced(draw, first, "- \t")
    elif kind == "other":
        second = "".join(draw(st.lists(st.one_of(_ALPHABET, _ANY), min_size=1, max_size=12)))
    else:
        second = first
    return first, second


def _nhs_number(nine: str) -> str | None:
    total = sum(int(d) * w for d, w in zip(nine, range(10, 1, -1)))
    check = (11 - total % 11) % 11
    return None if check == 10 else nine + str(check)


@st.composite
def nhs_pair(draw: st.DrawFn) -> tuple[str, str]:
    """Two valid NHS numbers written with spaces and hyphens: the same number or another."""
    digits = st.text(st.sampled_from("0123456789"), min_size=9, max_size=9)
    first = _nhs_number(draw(digits))
    second = first if draw(st.booleans()) else _nhs_number(draw(digits))
    assume(first is not None and second is not None)
    return _spaced(draw, first, " -"), _spaced(draw, second, " -")


# the service -------------------------------------------------------------------------------
@contextmanager
def running_vault(tmp_path, scheme: str) -> Iterator[tuple[asyncio.AbstractEventLoop, Vault]]:
    """One service for all examples of a test (each example uses a tenant of its own)."""
    loop = asyncio.new_event_loop()
    vault = loop.run_until_complete(open_vault(make_config(tmp_path / "data", patient_id_scheme=scheme)))
    try:
        yield loop, vault
    finally:
        loop.run_until_complete(vault.close())
        loop.close()


async def store_and_search(vault: Vault, first: str, second: str) -> tuple[dict[str, set[str]], bool]:
    """Upload one record per id into a new tenant; return what a search by each id finds, and
    whether the two records share their blind-index value."""
    principal = Principal(f"prop-{next(TENANTS)}", Role.CLINICIAN, "hypothesis")

    async def body():
        yield png(b"pixels")

    ids = {}
    for name, patient_id in (("first", first), ("second", second)):
        metadata = parse_metadata(sample_metadata(patient_id=patient_id))
        ids[name] = (await vault.create_image(principal, metadata, "image/png", body())).id
    found = {}
    for name, patient_id in (("first", first), ("second", second)):
        page = await vault.search(principal, SearchQuery(patient_id=patient_id))
        found[name] = {r.id for r in page.items}
    one, two = vault.index.read(lambda t: [t.get_record(decode_id(ids[n])).patient_hmac for n in ("first", "second")])
    return {"ids": set(ids.values()), **found, "first_id": {ids["first"]}, "second_id": {ids["second"]}}, one == two


def check(vault: Vault, loop: asyncio.AbstractEventLoop, scheme: str, first: str, second: str) -> None:
    assume(is_text(first, 128) and is_text(second, 128))
    found, shared = loop.run_until_complete(store_and_search(vault, first, second))
    same = ORACLES[scheme](first) == ORACLES[scheme](second)
    assert shared == same
    if same:
        assert found["first"] == found["second"] == found["ids"]
    else:
        assert found["first"] == found["first_id"] and found["second"] == found["second_id"]


@pytest.mark.parametrize("scheme", ["exact", "legacy"])
def test_ids_share_a_blind_index_entry_exactly_when_their_normal_forms_are_equal(tmp_path, scheme):
    with running_vault(tmp_path, scheme) as (loop, vault):

        @settings(max_examples=60, deadline=None, database=None)
        @given(free_text_pair())
        def property_holds(pair):
            check(vault, loop, scheme, *pair)

        property_holds()


def test_nhs_numbers_share_a_blind_index_entry_exactly_when_their_digits_are_equal(tmp_path):
    with running_vault(tmp_path, "nhs") as (loop, vault):

        @settings(max_examples=40, deadline=None, database=None)
        @given(nhs_pair())
        def property_holds(pair):
            check(vault, loop, "nhs", *pair)

        property_holds()
