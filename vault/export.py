"""Subject access export (GDPR Art. 15/20): everything held on one patient as a streamed zip.

The archive is produced piece by piece and never held whole: Python's ``zipfile`` writes to a
non-seekable sink (so it emits each member's sizes and CRC in a data descriptor after the data
and the central directory at the end), and every piece it writes is handed to the caller as
soon as a plaintext chunk has gone in. Members are stored, not deflated: photographs are
already compressed, and a stored member can be checked byte for byte against its digest.

Members: each image under its record's non-identifying display name plus extension (a second
record with the same display name gets ``-2``, ``-3``... before the extension), then
``manifest.json`` with every record's metadata (personal fields included: this is the data
subject's own copy) and the SHA-256 and size of each member as written.

Integrity: every chunk is authenticated before its bytes go into the zip, and each member's
SHA-256 is compared with the record's before the next member starts. A failure raises
``BlobCorrupt`` (audited, counted) from the iterator; by then part of the zip may be on the wire,
and the HTTP layer aborts the connection, so the client sees a truncated transfer (no central
directory: no zip reader will open it) rather than a well-formed zip with a wrong member.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from vault.errors import BlobCorrupt
from vault.metadata import Record

FLUSH_AT = 1 << 20  # hand bytes to the caller once this much has accumulated
MANIFEST = "manifest.json"
_ZIP_EPOCH = datetime(1980, 1, 1, tzinfo=timezone.utc)


class _Sink:
    """A write-only, non-seekable file for ``zipfile``: it collects what is written until
    the async side takes it. No ``tell``/``seek``, so zipfile streams (data descriptors)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._buffer)

    def take(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


def member_names(records: list[Record]) -> list[str]:
    """``display_name.ext`` per record, unique within the archive."""
    used: set[str] = {MANIFEST}
    names = []
    for record in records:
        base, ext = record.display_name, record.extension
        name = f"{base}.{ext}"
        n = 2
        while name in used:
            name = f"{base}-{n}.{ext}"
            n += 1
        used.add(name)
        names.append(name)
    return names


def _zip_time(stamp: str) -> tuple[int, int, int, int, int, int]:
    moment = max(datetime.fromisoformat(stamp.replace("Z", "+00:00")), _ZIP_EPOCH)
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


@dataclass(frozen=True)
class PatientExport:
    """A prepared export: which records, under which names; ``chunks()`` streams the zip once."""

    records: tuple[Record, ...]
    names: tuple[str, ...]
    generated_at: str
    _streams: tuple[Callable[[int, int], AsyncIterator[bytes]], ...] = field(repr=False)

    @property
    def audit_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.records)

    async def chunks(self) -> AsyncIterator[bytes]:
        sink = _Sink()
        archive = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        files: list[dict[str, Any]] = []
        for record, name, stream in zip(self.records, self.names, self._streams):
            info = zipfile.ZipInfo(name, date_time=_zip_time(record.metadata.captured_at))
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = record.size  # known in advance: zipfile picks zip64 from it
            digest = hashlib.sha256()
            written = 0
            with archive.open(info, "w") as member:
                async for piece in stream(0, record.size):
                    member.write(piece)
                    digest.update(piece)
                    written += len(piece)
                    if len(sink) >= FLUSH_AT:
                        yield sink.take()
            if written != record.size or digest.hexdigest() != record.sha256:
                raise BlobCorrupt()
            files.append({"file": name, "size": written, "sha256": digest.hexdigest(), "record": record.to_json()})
            yield sink.take()
        manifest = {
            "format": "imagevault-subject-access-export/1",
            "generated_at": self.generated_at,
            "tenant": self.records[0].tenant if self.records else None,
            "files": files,
        }
        archive.writestr(zipfile.ZipInfo(MANIFEST, date_time=_zip_time(self.generated_at)),
                         json.dumps(manifest, indent=2, ensure_ascii=False).encode())
        archive.close()
        yield sink.take()
