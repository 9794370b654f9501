"""Search: a patient's timeline through the blind index, or facets, with cursor paging.

One read transaction walks the entries of every filter at once (``vault.index.walk``) and
collects the matching records with their wrapped keys. It runs on the event loop first, within
``INLINE_WALK`` entries (a patient's timeline lands on ~20: a few tens of µs, less than the two
thread hand-offs a reader thread costs, which under load decided a search's p99); a walk that
needs more is run again from the start on a reader thread, so a broad search never holds the
loop for more than those few entries. On PostgreSQL every seek beyond the batch in hand is a
round trip, so only a walk of one term runs inline there: it reads each position's record, key
and rendition state in the statement that fetches the positions (``attach``), one round trip
in all, without BEGIN or COMMIT (one statement is a snapshot of its own). Then
the keys the DEK cache misses are unwrapped in one batched KMS call. A walk lands on at most
``search_scan_budget`` entries: when the budget runs out before the page is full, the page
carries fewer items (maybe none) and a cursor to resume from. A researcher is confined to records
consented for research, walked through their consent entries, and may not search by patient
identifier.
"""

from __future__ import annotations

from collections.abc import Callable
import itertools
from dataclasses import dataclass, replace
from typing import Any

from vault.audit.hooks import note
from vault.auth import Principal, Role
from vault.errors import Forbidden, IndexTampered, KeyMaterialError
from vault.ids import encode_id
from vault.index import patient_ids, schema
from vault.index.engine import IndexTxn
from vault.index.records import StoredRecord
from vault.index.rendition_jobs import STATE_ATTACH, RenditionState, get_states, state_keys
from vault.index.walk import Term, UnionTerm, Walk
from vault.metadata import Record
from vault.search import SearchQuery, encode_cursor
from vault.services.context import ServiceContext
from vault.services.reading import RecordReader

# Facets in the order the walk seeks them: the likely most selective first (a lesion or a
# session names a handful of records), so the first seeks already skip the most.
# Positions whose records one query reads during a search walk.
READ_AHEAD = 64
SCAN_ORDER = ("lesion_id", "session_id", "tag", "body_site", "modality", "consent")
# Index entries a walk may land on inline, on the event loop, before it moves to a reader thread.
INLINE_WALK = 32
# What a search reads for each matching position (``IndexTxn.prefix_cursor``'s ``attach``).
READ_WITH_POSITIONS = ((schema.DB_RECORDS, b""), (schema.DB_DEKS, b""), STATE_ATTACH)


@dataclass(frozen=True)
class SearchPage:
    items: list[Record]
    next_cursor: str | None
    unreadable: tuple[str, ...] = ()  # ids of matches whose data key would not unwrap
    # A patient search under the ``legacy`` scheme: whether this page holds records whose
    # patient id is written differently from the one searched (maybe another patient, merged
    # by that scheme's folding). None for other searches.
    merged_ids: bool | None = None
    tampered: tuple[str, ...] = ()  # ids of matches failing their index MAC (left out, reported)
    walked: int = 0  # index entries the walk landed on (not part of the response)

    def to_json(self, *, include_personal: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "items": [r.to_json(include_personal=include_personal) for r in self.items],
            "next_cursor": self.next_cursor,
        }
        if self.unreadable:
            body["unreadable"] = [{"id": rid, "code": KeyMaterialError.code} for rid in self.unreadable]
        if self.tampered:
            body.setdefault("unreadable", []).extend({"id": rid, "code": IndexTampered.code} for rid in self.tampered)
        if self.merged_ids is not None:
            body["merged_ids"] = self.merged_ids
        return body


@dataclass(frozen=True)
class _Collected:
    found: list[tuple[StoredRecord, str]]
    states: list[RenditionState | None]  # of each record found, read in the same snapshot
    resume_after: bytes | None  # the next page's cursor; None: nothing left to decide
    walked: int
    tampered: list[str]  # ids of index entries whose record failed its MAC
    complete: bool = True  # False: the budget ran out before the page was full or the walk done


class SearchService:
    def __init__(self, context: ServiceContext, reader: RecordReader) -> None:
        self._context = context
        self._reader = reader

    async def search(self, principal: Principal, query: SearchQuery) -> SearchPage:
        tenant = principal.tenant
        if principal.role is Role.RESEARCHER:
            if query.patient_id is not None:
                # Pseudonymised access: a researcher must not link an identifier to records.
                raise Forbidden("researchers may not search by patient identifier")
            if query.consent not in (None, "research"):
                return SearchPage([], None)
            query = replace(query, consent="research")
        # One term per filter that has index entries; the walk visits only the positions in all
        # of them (vault.index.walk), so a narrow filter bounds the work whatever the others.
        term_prefixes: list[tuple[bytes, list[bytes]]] = []
        reveal: int | None = None
        scheme: str | None = None
        if query.patient_id is not None:
            lookup = await self._context.tenant_keys.patient_lookup(tenant, query.patient_id, self._context.config)
            scheme = lookup.scheme
            term_prefixes.append((schema.DB_BY_PATIENT, [schema.patient_prefix(tenant, h) for h in lookup.hmacs]))
        facets = query.facet_filters()
        for name in SCAN_ORDER:
            if name in facets:
                prefix = schema.facet_prefix(tenant, schema.SEARCH_FACETS[name], facets[name])
                if name == "consent" and principal.role is Role.RESEARCHER:
                    # A cursor may name only positions the researcher may see: consented ones.
                    reveal = len(term_prefixes)
                term_prefixes.append((schema.DB_BY_FACET, [prefix]))
        if not term_prefixes:
            term_prefixes.append((schema.DB_BY_FACET, [schema.facet_prefix(tenant, schema.FACET_ALL)]))
        low = schema.encode_time(query.captured_from) if query.captured_from else b""
        if query.cursor is not None:
            low = max(low, query.cursor + b"\x00")
        high = schema.encode_time(query.captured_to) if query.captured_to else b"\xff" * 9
        limit = query.limit
        budget = self._context.config.search_scan_budget

        def collect_within(walk_budget: int) -> Callable[[IndexTxn], _Collected]:
            def collect(txn: IndexTxn) -> _Collected:
                tampered: list[str] = []  # built here: a read may be run again from the start
                terms: list[Term] = []
                for db, prefixes in term_prefixes:
                    cursors = [txn.prefix_cursor(db, prefix, high, attach) for prefix in prefixes]
                    # A patient is under two prefixes only while an epoch replaces the index key.
                    terms.append(cursors[0] if len(cursors) == 1 else UnionTerm(cursors))
                walk = Walk(terms, low, walk_budget, reveal=reveal)
                found: list[tuple[StoredRecord, str]] = []
                states: list[RenditionState | None] = []
                last: bytes | None = None
                positions = iter(walk)
                while True:
                    # Positions in small groups, their records and keys read together (one query
                    # each on PostgreSQL); every position taken is decided before the walk's resume
                    # point is used, so the cursor semantics are those of one at a time.
                    group = list(itertools.islice(positions, min(READ_AHEAD, limit + 1 - len(found))))
                    if not group:
                        break
                    rids = [schema.record_id_of(position) for position in group]
                    # Records, their keys and rendition states: one statement on PostgreSQL.
                    txn.prefetch([(schema.DB_RECORDS, rid) for rid in rids] + [(schema.DB_DEKS, rid) for rid in rids]
                                 + state_keys(rids))
                    raws = txn.get_many(schema.DB_RECORDS, rids)
                    deks = txn.get_many(schema.DB_DEKS, rids)
                    group_states = get_states(txn, rids)
                    for position, rid, raw, wrapped, state in zip(group, rids, raws, deks, group_states):
                        try:
                            stored = txn.record_from(rid, raw)
                        except IndexTampered:
                            tampered.append(encode_id(rid))
                            continue
                        # The index entry is only a pointer: the authenticated record decides (a
                        # planted entry cannot bring another tenant's record, or an unconsented
                        # one, into a page).
                        if stored is None or stored.tenant != tenant or not matches(stored, query):
                            continue
                        if len(found) == limit:
                            # at least one more match
                            return _Collected(found, states, last, walk.walked, tampered, complete=True)
                        if wrapped is None:
                            continue
                        found.append((stored, wrapped.decode()))
                        states.append(state)
                        last = position
                # The budget ran out first: resume after the last position decided, even when this
                # page holds fewer than ``limit`` items (or none).
                return _Collected(found, states, None if walk.exhausted else walk.resume_after, walk.walked,
                                  tampered, complete=walk.exhausted)

            return collect

        # One term under one prefix (a patient's timeline; a single facet): every position it
        # lands on is a match candidate, so the engine may read each one's record, key and
        # rendition state with the keys themselves (on PostgreSQL the walk is then one statement).
        single = len(term_prefixes) == 1 and len(term_prefixes[0][1]) == 1
        attach = READ_WITH_POSITIONS if single else ()
        collected = None
        # Inline where the walk is a read of the memory map, or a single statement: on
        # PostgreSQL a walk of several terms costs a round trip per seek beyond its batch.
        if budget > INLINE_WALK and (self._context.index.engine == "lmdb" or single):
            collected = self._context.index.read(collect_within(INLINE_WALK))
            if not collected.complete:
                collected = None
        if collected is None:
            collected = await self._context.index.read_off_loop(collect_within(budget))
        self._context.metrics.search_walked.observe(collected.walked)
        found, last, tampered = collected.found, collected.resume_after, collected.tampered
        items, unreadable = await self._reader.readable_records_for(principal, found, collected.states)
        merged = None
        if query.patient_id is not None and scheme == patient_ids.LEGACY:
            # Patient searchers see personal data (researchers may not search by patient), so
            # the items carry their decrypted patient ids.
            merged = any(not patient_ids.same_raw_id(r.metadata.patient_id, query.patient_id) for r in items)
            note(merged_ids=merged)
        if tampered:
            note(tampered=tampered)
        return SearchPage(items, encode_cursor(last) if last is not None else None, tuple(unreadable), merged,
                          tuple(tampered), walked=collected.walked)


def matches(stored: StoredRecord, query: SearchQuery) -> bool:
    """Whether a record satisfies every filter of the query (the scan used only one)."""
    meta = stored.metadata
    if query.lesion_id is not None and meta.lesion_id != query.lesion_id:
        return False
    if query.session_id is not None and meta.session_id != query.session_id:
        return False
    if query.modality is not None and meta.modality != query.modality:
        return False
    if query.body_site is not None and meta.body_site != query.body_site:
        return False
    if query.tag is not None and query.tag not in meta.tags:
        return False
    if query.consent is not None and not meta.consent.allows(query.consent):
        return False
    return True
