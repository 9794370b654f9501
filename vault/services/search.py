"""Search: a patient's timeline through the blind index, or facets, with cursor paging.

One read transaction collects the matching records with their wrapped keys; the keys the DEK
cache misses are unwrapped in one batched KMS call. A researcher is confined to records
consented for research and may not search by patient identifier.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from vault.audit.hooks import note
from vault.auth import Principal, Role
from vault.errors import Forbidden, IndexTampered, KeyMaterialError
from vault.ids import encode_id
from vault.index import patient_ids, schema
from vault.index.lmdb import IndexTxn
from vault.index.records import StoredRecord
from vault.metadata import Record
from vault.search import SearchQuery, encode_cursor
from vault.services.context import ServiceContext
from vault.services.reading import RecordReader

# Facets in the order tried for the scan: the most selective first (a lesion or a session
# names a handful of records), so the fewest keys are walked.
SCAN_ORDER = ("lesion_id", "session_id", "tag", "body_site", "modality", "consent")


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
        if query.patient_id is not None:
            db = schema.DB_BY_PATIENT
            hmacs = await self._context.tenant_keys.patient_hmacs(tenant, query.patient_id, self._context.config)
            prefixes = [schema.patient_prefix(tenant, h) for h in hmacs]
        else:
            db = schema.DB_BY_FACET
            facets = query.facet_filters()
            for name in SCAN_ORDER:
                if name in facets:
                    prefixes = [schema.facet_prefix(tenant, schema.SEARCH_FACETS[name], facets[name])]
                    break
            else:
                prefixes = [schema.facet_prefix(tenant, schema.FACET_ALL)]
        low = schema.encode_time(query.captured_from) if query.captured_from else b""
        if query.cursor is not None:
            low = max(low, query.cursor + b"\x00")
        high = schema.encode_time(query.captured_to) if query.captured_to else b"\xff" * 9
        limit = query.limit

        def keys_in_order(txn: IndexTxn) -> Iterator[bytes]:
            # Every key under each prefix, in suffix (capture time, id) order across prefixes:
            # a patient is under two prefixes only while an epoch replaces the index key.
            scans = [txn.scan_keys(db, prefix + low, prefix + high) for prefix in prefixes]
            if len(scans) == 1:
                return scans[0]
            return heapq.merge(*scans, key=schema.suffix_of)

        tampered: list[str] = []

        def collect(txn: IndexTxn) -> tuple[list[tuple[StoredRecord, str]], bytes | None]:
            found: list[tuple[StoredRecord, str]] = []
            last: bytes | None = None
            for key in keys_in_order(txn):
                rid = schema.record_id_of(key)
                try:
                    stored = txn.get_record(rid)
                except IndexTampered:
                    tampered.append(encode_id(rid))
                    continue
                # The index entry is only a pointer: the authenticated record decides (a planted
                # entry cannot bring another tenant's record, or an unconsented one, into a page).
                if stored is None or stored.tenant != tenant or not matches(stored, query):
                    continue
                if len(found) == limit:
                    return found, last  # there is at least one more match
                wrapped = txn.get_dek(rid)
                if wrapped is None:
                    continue
                found.append((stored, wrapped))
                last = schema.suffix_of(key)
            return found, None

        found, last = self._context.index.read(collect)
        items, unreadable = await self._reader.readable_records_for(principal, found)
        merged = None
        if query.patient_id is not None and self._scheme(tenant) == patient_ids.LEGACY:
            # Patient searchers see personal data (researchers may not search by patient), so
            # the items carry their decrypted patient ids.
            merged = any(not patient_ids.same_raw_id(r.metadata.patient_id, query.patient_id) for r in items)
            note(merged_ids=merged)
        if tampered:
            note(tampered=tampered)
        return SearchPage(items, encode_cursor(last) if last is not None else None, tuple(unreadable), merged,
                          tuple(tampered))

    def _scheme(self, tenant: str) -> str | None:
        return self._context.index.read(lambda t: patient_ids.recorded(t, tenant))


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
