"""Outcomes of requests made with an ``Idempotency-Key``: claimed, filed, found, expired.

A client that lost the answer to ``POST /v1/images`` or ``POST /v1/patients/erase`` sends the
same request again with the same key and gets the first outcome instead of a second record (or
a second erasure). What is kept, and under which keys (docs/format.md, "Idempotency entries";
docs/design.md, "Idempotent creation"):

* **Where an entry is filed.** ``K``, an HMAC of the caller's scope (tenant, how it
  authenticated, its name, the user it acts for) and the key. An upload's is under the index
  integrity key: it must outlive shred epochs, or a retry after one would create a duplicate.
  An erasure's is under the tenant's blind-index key, which each shred epoch replaces: its
  entries become unfindable then, and a retry runs the erasure again, which finds nothing left
  to shred.
* **What identifies the request.** A fingerprint HMAC of the request (its metadata, content type
  and the SHA-256 of the file; or the erasure's patient id, reason and override), never the
  request itself. An upload's is keyed by a subkey of the new record's DEK, so it dies with the
  record; an erasure's by the tenant's blind-index key, so it dies at the next epoch. Either
  way nothing stored lets anyone test a guessed patient id once the data it was about is gone,
  and nothing lets anyone without the KEK test one at all.
* **The outcome.** The record id (the record is re-read at each replay), or the erasure's report
  (record ids and counts), sealed under the index integrity key since it decides the answer.

A request in progress holds its key in this process (``IdempotencyKeyInFlight`` for a second one
meanwhile). Not on disk: only the daemon serves requests for a data directory, so after a crash
there is nothing to void, and the retry finds either the entry (committed with the record in one
transaction) or nothing (then nothing was committed). Entries live ``idempotency_ttl`` seconds;
an expired one is ignored at once and removed by ``purge`` (a supervisor job).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from vault.auth import Principal
from vault.errors import IdempotencyKeyInFlight, IdempotencyKeyMismatch
from vault.idempotency import canonical, erasure_material, keyed_message
from vault.index import schema
from vault.index.engine import IndexTxn
from vault.metadata import format_timestamp
from vault.services.context import ServiceContext
from vault.store.format import derive_idempotency_key

log = logging.getLogger(__name__)

UPLOAD_REQUEST_DOMAIN = b"imagevault/v1/idempotency-upload-request\x00"
ERASURE_LOOKUP_DOMAIN = b"imagevault/v1/idempotency-erasure-lookup\x00"
ERASURE_REQUEST_DOMAIN = b"imagevault/v1/idempotency-erasure-request\x00"
PURGE_BATCH = 1000
# At most this long between purges (shorter for a shorter time to live).
PURGE_INTERVAL = 3600.0


@dataclass
class Claim:
    """A key held by one request in progress: where its outcome goes, and what was found there.

    ``found``: the live outcome document of an earlier request with the same key and caller
    (for an erasure, already checked to be for the same request), or None."""

    kind: bytes
    entry_key: bytes
    slot: bytes = field(repr=False)
    found: dict[str, Any] | None = None
    request: bytes = field(default=b"", repr=False)  # an erasure's fingerprint, as it will be filed
    released: bool = False


def upload_fingerprint(dek: bytes, record_id: bytes, material: bytes) -> str:
    """The fingerprint of an upload request, keyed by a subkey of its record's DEK."""
    key = derive_idempotency_key(dek, record_id)
    return hmac.new(key, UPLOAD_REQUEST_DOMAIN + material, hashlib.sha256).hexdigest()


class IdempotencyOutcomes:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context
        self._in_flight: set[bytes] = set()

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=self._context.config.idempotency_ttl)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # claims ---------------------------------------------------------------------------------
    def _hold(self, kind: bytes, message: bytes) -> bytes:
        # Memory only; a digest all the same, so that no key sits in a heap dump as sent.
        slot = hashlib.sha256(kind + message).digest()
        if slot in self._in_flight:
            raise IdempotencyKeyInFlight()
        self._in_flight.add(slot)
        return slot

    def release(self, claim: Claim) -> None:
        if not claim.released:
            claim.released = True
            self._in_flight.discard(claim.slot)

    def claim_upload(self, principal: Principal, key: str) -> Claim:
        """Hold ``key`` for an upload (``IdempotencyKeyInFlight`` if held) and look up its entry.
        The caller releases the claim when the request ends, however it ends."""
        message = keyed_message(principal, key)
        lookup = self._context.index.seal.lookup_key(message)  # type: ignore[union-attr]
        claim = Claim(schema.IDEMPOTENCY_UPLOAD, schema.idempotency_key(schema.IDEMPOTENCY_UPLOAD, lookup),
                      self._hold(schema.IDEMPOTENCY_UPLOAD, message))
        try:
            claim.found = self._live(claim.entry_key)
        except BaseException:
            self.release(claim)
            raise
        return claim

    async def claim_erasure(self, principal: Principal, key: str, patient_id: str, reason: str,
                            override_retention: bool) -> Claim:
        """As ``claim_upload``, for an erasure; the request is compared here (under the key that
        filed the entry): ``IdempotencyKeyMismatch`` if the key was used for another one."""
        context = self._context
        message = keyed_message(principal, key)
        material = erasure_material(patient_id, reason, override_retention)
        slot = self._hold(schema.IDEMPOTENCY_ERASURE, message)
        try:
            write_key = (await context.tenant_keys.write_key(principal.tenant)).key
            found: dict[str, Any] | None = None
            for index_key in await context.tenant_keys.read_keys(principal.tenant):
                lookup = hmac.new(index_key, ERASURE_LOOKUP_DOMAIN + message, hashlib.sha256).digest()
                found = self._live(schema.idempotency_key(schema.IDEMPOTENCY_ERASURE, lookup))
                if found is not None:
                    request = hmac.new(index_key, ERASURE_REQUEST_DOMAIN + material, hashlib.sha256).hexdigest()
                    if not hmac.compare_digest(str(found.get("request", "")), request):
                        raise IdempotencyKeyMismatch()
                    break
            lookup = hmac.new(write_key, ERASURE_LOOKUP_DOMAIN + message, hashlib.sha256).digest()
            request = hmac.new(write_key, ERASURE_REQUEST_DOMAIN + material, hashlib.sha256).digest()
        except BaseException:
            self._in_flight.discard(slot)
            raise
        return Claim(schema.IDEMPOTENCY_ERASURE, schema.idempotency_key(schema.IDEMPOTENCY_ERASURE, lookup), slot,
                     found, request)

    # entries --------------------------------------------------------------------------------
    def _live(self, entry_key: bytes) -> dict[str, Any] | None:
        """The entry's outcome document unless absent or expired; ``IndexTampered`` if forged."""
        context = self._context

        def read(txn: IndexTxn) -> dict[str, Any] | None:
            raw = txn.get_bytes(schema.DB_IDEMPOTENCY, entry_key)
            return None if raw is None else _open(txn, entry_key, raw)

        doc = context.index.read(read)
        if doc is None or _expires(doc) <= context.clock():
            return None
        return doc

    def put(self, txn: IndexTxn, claim: Claim, outcome: dict[str, Any], now: datetime) -> None:
        """File ``outcome`` for ``claim`` inside the caller's write transaction (an upload's is the
        record's own commit). An entry still live there was filed by another process holding
        the same key meanwhile: ``IdempotencyKeyInFlight``, and the caller's work is rolled back."""
        entry_key = claim.entry_key
        raw = txn.get_bytes(schema.DB_IDEMPOTENCY, entry_key)
        if raw is not None:
            previous = _open(txn, entry_key, raw)
            if _expires(previous) > now:
                raise IdempotencyKeyInFlight()
            txn.delete_key(schema.DB_IDEMPOTENCY, schema.idempotency_expiry_key(_expires(previous), entry_key))
        expires = now + self.ttl
        doc = {**outcome, "created_at": format_timestamp(now), "expires_at": format_timestamp(expires)}
        txn.put_bytes(schema.DB_IDEMPOTENCY, entry_key, txn.seal.seal_outcome(entry_key, canonical(doc)))
        txn.put_bytes(schema.DB_IDEMPOTENCY, schema.idempotency_expiry_key(expires, entry_key), b"")

    async def file_erasure(self, claim: Claim, report: dict[str, Any], shredded: tuple[str, ...]) -> None:
        """File a finished erasure's report (its own transaction, after the shredding)."""
        now = self._context.clock()
        outcome = {"kind": "erasure", "request": claim.request.hex(), "report": report, "shredded": list(shredded)}
        await self._context.index.write(lambda txn: self.put(txn, claim, outcome, now))

    async def purge(self) -> int:
        """Remove every expired entry, a batch per transaction. How many were removed."""
        context = self._context
        removed = 0
        while True:
            stop = schema.IDEMPOTENCY_EXPIRY + schema.encode_time(context.clock())

            def batch(txn: IndexTxn, stop: bytes = stop) -> int:
                due = []
                for key in txn.scan_keys(schema.DB_IDEMPOTENCY, schema.IDEMPOTENCY_EXPIRY, stop):
                    due.append(key)
                    if len(due) >= PURGE_BATCH:
                        break
                for key in due:  # after the scan: no cursor walks keys being deleted
                    txn.delete_key(schema.DB_IDEMPOTENCY, key)
                    txn.delete_key(schema.DB_IDEMPOTENCY, schema.idempotency_entry_of(key))
                return len(due)

            count = await context.index.write(batch)
            removed += count
            if count < PURGE_BATCH:
                return removed


def _open(txn: IndexTxn, entry_key: bytes, raw: bytes) -> dict[str, Any]:
    doc = json.loads(txn.seal.open_outcome(entry_key, raw))
    if not isinstance(doc, dict):
        raise TypeError("idempotency outcome is not a JSON object")
    return doc


def _expires(doc: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(doc["expires_at"]))
