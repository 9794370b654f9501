"""The audit chain as JSON lines, for a SIEM, and the check a receiver runs on them. No I/O.

One line per entry: the fields of the audit listing (``AuditEntry.to_json``: ``seq``, ``time``,
``tenant``, ``actor``, ``action``, ``record_ids``, ``outcome``, ``details``, ``prev_hash``,
``hash``) plus ``entry``, the base64 of the exact ``ENTRY`` bytes that were hashed
(docs/format.md, "Audit export"). The JSON fields are for reading and searching; ``entry`` is
what is verified, so a receiver needs no canonical JSON: SHA-256 of ``entry`` is ``hash``,
the last 32 bytes of ``entry`` are ``prev_hash``, and each line's ``prev_hash`` is the ``hash``
of the line before (seq one less). ``ExportCheck`` does that and also that the JSON fields say
what ``entry`` says, so a tampered field cannot pass beside an intact ``entry``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from vault.audit.chain import (
    GENESIS,
    HASH_LEN,
    MalformedEntry,
    decode_stored,
    entry_hash,
)


def export_line(stored: bytes) -> str:
    """The JSON line (without its newline) of one stored value, ``ENTRY || HASH``.
    ``MalformedEntry`` if the value is not a well-formed entry."""
    entry, encoded = decode_stored(stored)
    line = entry.to_json()
    line["entry"] = base64.b64encode(encoded).decode("ascii")
    return json.dumps(line, ensure_ascii=True, separators=(",", ":"))


@dataclass(frozen=True)
class ExportReport:
    ok: bool
    entries: int
    first_seq: int | None
    last_seq: int | None
    head: str | None  # hash of the last line verified
    bad_line: int | None = None  # 1-based line number of the first bad line
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "first_seq": self.first_seq, "last_seq": self.last_seq,
                "head": self.head, "bad_line": self.bad_line, "reason": self.reason}


class ExportCheck:
    """Feed lines in order; ``report()`` at the end. The first line may start anywhere
    (an export ``--after`` N): its ``prev_hash`` is taken as given unless ``prev_hash`` (the hash
    of entry N, kept from the previous export) is passed, and must be the genesis value when its
    seq is 1."""

    def __init__(self, prev_hash: bytes | None = None) -> None:
        self._prev = prev_hash
        self._seq: int | None = None
        self._first: int | None = None
        self._lines = 0
        self._entries = 0
        self.failure: tuple[int, str] | None = None

    def _fail(self, reason: str) -> bool:
        self.failure = (self._lines, reason)
        return False

    def feed(self, text: str) -> bool:
        """Check one line; False (and ``failure`` set) at the first bad one; blank lines skip."""
        if self.failure is not None:
            return False
        self._lines += 1
        if not text.strip():
            return True
        try:
            line = json.loads(text)
            encoded = base64.b64decode(line["entry"], validate=True)
            stored_hash = bytes.fromhex(line["hash"])
            prev_hash = bytes.fromhex(line["prev_hash"])
            seq = line["seq"]
        except (ValueError, KeyError, TypeError, binascii.Error):
            return self._fail("not an export line (JSON with seq, entry, hash and prev_hash)")
        if not isinstance(line, dict) or not isinstance(seq, int) or len(stored_hash) != HASH_LEN:
            return self._fail("not an export line (JSON with seq, entry, hash and prev_hash)")
        if entry_hash(encoded) != stored_hash:
            return self._fail("hash is not the SHA-256 of entry")
        try:
            entry, _ = decode_stored(encoded + stored_hash)
        except MalformedEntry as exc:
            return self._fail(f"entry is malformed: {exc}")
        fields = {k: v for k, v in line.items() if k != "entry"}
        if entry.to_json() != fields:
            return self._fail("the JSON fields differ from what entry encodes")
        if prev_hash != entry.prev_hash:
            return self._fail("prev_hash is not the one inside entry")
        if self._seq is not None and seq != self._seq + 1:
            return self._fail(f"seq {seq} follows {self._seq}: entries missing or out of order")
        if seq == 1 and prev_hash != GENESIS:
            return self._fail("entry 1 does not start from the genesis value")
        if self._prev is not None and prev_hash != self._prev:
            return self._fail("prev_hash is not the hash of the entry before")
        self._prev, self._seq = stored_hash, seq
        self._first = seq if self._first is None else self._first
        self._entries += 1
        return True

    def report(self) -> ExportReport:
        head = self._prev.hex() if self._entries and self._prev is not None else None
        if self.failure is not None:
            line, reason = self.failure
            return ExportReport(False, self._entries, self._first, self._seq, head, line, reason)
        return ExportReport(True, self._entries, self._first, self._seq, head)
