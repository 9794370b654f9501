"""The audit chain's entries: typed values, their canonical byte encoding and hash. No I/O.

Specified byte by byte in docs/format.md ("Audit chain")::

    ENTRY = "IVA1" || BE64(seq) || TIME(time) || STR(scope) || STR(actor.name) || STR(actor.role)
            || STR(actor.tenant) || STR(action) || BE32(n) || ID_1 || ... || ID_n
            || STR(outcome) || STR(details) || prev_hash (32 bytes)
    STR(x) = BE32(len(UTF-8 of x)) || UTF-8 of x
    hash   = SHA-256(ENTRY)                     stored value = ENTRY || hash

An actor that authenticated with a JWT, or an application acting on behalf of a user, is
written as "IVA2", which adds ``STR(actor.via) || STR(actor.on_behalf_of or "")`` right after
``STR(actor.tenant)``. Every other entry stays "IVA1", byte for byte as before, so entries
written before these fields existed keep their hashes and verify unchanged.

The encoding is length-prefixed binary rather than JSON so that "canonical" needs no rules
about escapes, number formats or key order: the bytes that are stored are the bytes that are
hashed. ``details`` is a small JSON object (sorted keys, no white space) carried as a string;
the chain treats it as opaque bytes. Nothing in an entry may be a patient identifier, a
description or a diagnosis: callers pass record ids, codes, counts and digests only.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from vault.auth import VIA_TOKEN
from vault.errors import NotFound
from vault.ids import ID_BYTES, decode_id, encode_id
from vault.index.schema import decode_time, encode_time
from vault.metadata import format_timestamp

MAGIC = b"IVA1"
MAGIC_ACTOR_V2 = b"IVA2"  # the actor also names how it authenticated and whom it acts for
HASH_LEN = 32
GENESIS = bytes(HASH_LEN)  # prev_hash of entry 1: 32 zero bytes
GLOBAL_SCOPE = "-"  # entries about no one tenant (key operations, sweep summaries); admins' own
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class AuditAction(str, Enum):
    """Every action the trail records (docs/format.md lists them; verification ignores them)."""

    CREATE = "create"
    READ = "read"
    SEARCH = "search"
    UPDATE = "update"
    DELETE = "delete"
    EXPORT = "export"
    ACCESS_REPORT = "access_report"
    ERASE = "erase"
    LEGAL_HOLD = "legal_hold"
    EXPIRE = "expire"
    RETENTION_SWEEP = "retention_sweep"
    INTEGRITY_FAILURE = "integrity_failure"
    TOKEN_CREATE = "token_create"
    TOKEN_REVOKE = "token_revoke"
    TOKEN_LIST = "token_list"
    KEY_STATUS = "key_status"
    KEY_ROTATE = "key_rotate"
    KEY_RETIRE = "key_retire"
    KEY_REWRAP = "key_rewrap"
    KEY_EPOCH = "key_epoch"
    KEY_ESCROW = "key_escrow"
    AUDIT_READ = "audit_read"
    AUDIT_VERIFY = "audit_verify"
    STATS = "stats"
    SCRUB = "scrub"
    GC = "gc"
    BACKUP = "backup"
    RESTORE = "restore"
    INDEX_UPGRADE = "index_upgrade"
    RENDITION_BACKFILL = "rendition_backfill"
    ON_BEHALF = "on_behalf"  # a token without the right named a user (X-On-Behalf-Of): refused
    # Resumable (tus) uploads; the record one completes is a ``create`` like any upload's.
    UPLOAD_START = "upload_start"
    UPLOAD_STATUS = "upload_status"
    UPLOAD_TERMINATE = "upload_terminate"
    UPLOAD_EXPIRE = "upload_expire"
    SESSION_START = "session_start"  # a console sign-in (a cookie session began)
    SESSION_END = "session_end"  # a console sign-out


@dataclass(frozen=True)
class Actor:
    """Who acted: a token's name (or a JWT's subject, ``via`` "oidc"), its role and tenant, and
    the user an application token acted for (``on_behalf_of``), if it named one."""

    name: str
    role: str
    tenant: str
    via: str = VIA_TOKEN
    on_behalf_of: str | None = None

    @property
    def extended(self) -> bool:
        """Needs the IVA2 encoding (an IVA1 entry cannot say this)."""
        return self.via != VIA_TOKEN or self.on_behalf_of is not None

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "role": self.role, "tenant": self.tenant, "via": self.via,
                "on_behalf_of": self.on_behalf_of}


@dataclass(frozen=True)
class AuditEvent:
    """What a caller asks to append; the log adds seq, time and the hashes."""

    action: str
    actor: Actor
    scope: str  # the tenant whose records the entry is about, or GLOBAL_SCOPE
    record_ids: tuple[bytes, ...] = ()
    outcome: str = "ok"  # "ok" or the API error code
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: datetime
    event: AuditEvent
    prev_hash: bytes
    hash: bytes

    def to_json(self) -> dict[str, Any]:
        e = self.event
        return {
            "seq": self.seq,
            "time": format_timestamp(self.time),
            "tenant": e.scope,
            "actor": e.actor.to_json(),
            "action": e.action,
            "record_ids": [encode_id(r) for r in e.record_ids],
            "outcome": e.outcome,
            "details": dict(e.details),
            "prev_hash": self.prev_hash.hex(),
            "hash": self.hash.hex(),
        }


class MalformedEntry(ValueError):
    """Stored bytes that are not a well-formed entry (verification reports the seq)."""


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def canonical_details(details: Mapping[str, Any]) -> str:
    return json.dumps(dict(details), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def encode_entry(seq: int, moment: datetime, event: AuditEvent, prev_hash: bytes) -> bytes:
    """ENTRY (without its hash). ``seq`` starts at 1; ``prev_hash`` is 32 bytes."""
    if seq < 1 or len(prev_hash) != HASH_LEN:
        raise ValueError("seq must be >= 1 and prev_hash 32 bytes")
    for rid in event.record_ids:
        if len(rid) != ID_BYTES:
            raise ValueError("record ids must be 16 bytes")
    actor = event.actor
    if actor.on_behalf_of == "":
        raise ValueError("on_behalf_of must be None or a name")
    extension = (_str(actor.via), _str(actor.on_behalf_of or "")) if actor.extended else ()
    return b"".join((
        MAGIC_ACTOR_V2 if actor.extended else MAGIC,
        struct.pack(">Q", seq),
        encode_time(moment),
        _str(event.scope),
        _str(actor.name),
        _str(actor.role),
        _str(actor.tenant),
        *extension,
        _str(event.action),
        struct.pack(">I", len(event.record_ids)),
        *event.record_ids,
        _str(event.outcome),
        _str(canonical_details(event.details)),
        prev_hash,
    ))


def entry_hash(encoded: bytes) -> bytes:
    return hashlib.sha256(encoded).digest()


class _Reader:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.raw):
            raise MalformedEntry("entry is truncated")
        out = self.raw[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def text(self) -> str:
        try:
            return self.take(self.u32()).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedEntry("text field is not UTF-8") from exc


def decode_stored(raw: bytes) -> tuple[AuditEntry, bytes]:
    """Parse a stored value (ENTRY || hash) into the entry and the exact ENTRY bytes.

    The entry's ``hash`` is the *stored* hash; the caller compares it with ``entry_hash``.
    """
    if len(raw) < len(MAGIC) + HASH_LEN:
        raise MalformedEntry("entry is truncated")
    encoded, stored_hash = raw[:-HASH_LEN], raw[-HASH_LEN:]
    reader = _Reader(encoded)
    magic = reader.take(4)
    if magic not in (MAGIC, MAGIC_ACTOR_V2):
        raise MalformedEntry("bad magic")
    seq = int(struct.unpack(">Q", reader.take(8))[0])
    micros = decode_time(reader.take(8))
    scope = reader.text()
    actor = Actor(reader.text(), reader.text(), reader.text())
    if magic == MAGIC_ACTOR_V2:
        via, on_behalf_of = reader.text(), reader.text()
        actor = Actor(actor.name, actor.role, actor.tenant, via, on_behalf_of or None)
        if not actor.extended:
            raise MalformedEntry("IVA2 entry with an actor that IVA1 encodes")
    action = reader.text()
    count = reader.u32()
    ids = tuple(reader.take(ID_BYTES) for _ in range(count))
    outcome = reader.text()
    try:
        details = json.loads(reader.text())
    except json.JSONDecodeError as exc:
        raise MalformedEntry("details are not JSON") from exc
    if not isinstance(details, dict):
        raise MalformedEntry("details are not a JSON object")
    prev_hash = reader.take(HASH_LEN)
    if reader.pos != len(encoded):
        raise MalformedEntry("trailing bytes after the entry")
    try:
        moment = _EPOCH + timedelta(microseconds=micros)
    except OverflowError as exc:
        raise MalformedEntry("time out of range") from exc
    event = AuditEvent(action, actor, scope, ids, outcome, details)
    return AuditEntry(seq, moment, event, prev_hash, stored_hash), encoded


def record_ids_of(texts: Sequence[str]) -> tuple[bytes, ...]:
    """Record ids in their API form → raw bytes, skipping anything that is not an id."""
    out = []
    for text in texts:
        try:
            out.append(decode_id(text))
        except NotFound:
            continue
    return tuple(out)
