"""De-identified copies of stored images, for researchers (docs/format.md, "De-identified
copies for researchers").

``deidentify`` turns the stored image (read by range through the read path, so every byte is
authenticated before it is used) into a copy without embedded identifiers:

=====================  =====================================================  ==============
content type           how                                                    size known
=====================  =====================================================  ==============
``image/jpeg``         stream, marker segments whitelisted to EOI (``jpeg``)  no
``image/png``          stream, chunks whitelisted to IEND (``png``)           no
``image/webp``         RIFF rebuilt from kept chunks (``webp``)               yes
``image/tiff``         IFDs rebuilt from image-structure tags (``tiff``)      yes
``application/dicom``  PS3.15 Basic Profile, in memory (``dicom``)            yes (+ digest)
=====================  =====================================================  ==============

Any other type (HEIC, OBJ, PLY...) raises ``UnsupportedFormat`` before anything is read. A file
that does not parse as its type raises ``Malformed``: where that is found before the first byte
is produced, the caller can still answer with a clean error; later, the caller must abort the
response (a partial copy is never a finished one). Unexpected failures inside a parser are
reported the same way, never passed over.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from vault.errors import ImageVaultError
from vault.ingest.deid.failures import Malformed, UnsupportedFormat
from vault.ingest.deid.jpeg import JpegDeidentifier
from vault.ingest.deid.png import PngDeidentifier
from vault.ingest.deid.source import Plan, RangeSource, RangeStream
from vault.ingest.deid.tiff import tiff_plan
from vault.ingest.deid.webp import webp_plan

DEIDENTIFIABLE = frozenset({"image/jpeg", "image/png", "image/webp", "image/tiff", "application/dicom"})

__all__ = ["DEIDENTIFIABLE", "Deidentified", "deidentifiable", "deidentify"]


@dataclass(frozen=True)
class Deidentified:
    """A de-identified copy: its bytes (iterate once), and its size and SHA-256 (hex) when
    they are known before the first byte is sent."""

    chunks: AsyncGenerator[bytes, None]
    size: int | None = None
    sha256: str | None = None


def deidentifiable(content_type: str) -> bool:
    return content_type in DEIDENTIFIABLE


async def _guarded(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Any failure while producing the copy is an ``ImageVaultError``: a bug in a parser must
    end the copy like a malformed file does, never let it pass as complete."""
    try:
        async for piece in chunks:
            yield piece
    except ImageVaultError:
        raise
    except Exception as exc:
        raise Malformed() from exc


async def _filtered(source: RangeSource, make: Callable[[], JpegDeidentifier | PngDeidentifier]) -> AsyncIterator[bytes]:
    deidentifier = make()
    async for piece in source.stream(0, source.size):
        out = deidentifier.feed(piece)
        if out:
            yield out
    tail = deidentifier.finish()
    if tail:
        yield tail


async def _buffered(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def deidentify(content_type: str, size: int, stream: RangeStream, salt: bytes) -> Deidentified:
    """The de-identified copy of a stored image of ``size`` bytes read through ``stream``;
    ``salt`` (the record id) seeds the replacement DICOM UIDs."""
    if not deidentifiable(content_type):
        raise UnsupportedFormat()
    source = RangeSource(size, stream)
    try:
        if content_type == "image/jpeg":
            return Deidentified(_guarded(_filtered(source, JpegDeidentifier)))
        if content_type == "image/png":
            return Deidentified(_guarded(_filtered(source, PngDeidentifier)))
        if content_type == "application/dicom":
            # Imported on first use: pydicom and its data dictionaries cost ~25 MB of memory in
            # every daemon, most of which never serve a DICOM file to a researcher.
            from vault.ingest.deid.dicom import dicom_bytes

            data = await dicom_bytes(source, salt)
            return Deidentified(_buffered(data), len(data), hashlib.sha256(data).hexdigest())
        plan: Plan = await (webp_plan(source) if content_type == "image/webp" else tiff_plan(source))
        return Deidentified(_guarded(plan.chunks(source)), plan.size)
    except ImageVaultError:
        raise
    except Exception as exc:
        raise Malformed() from exc
