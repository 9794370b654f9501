"""The stored image as the de-identifiers read it: random access by byte range, and output
assembled from pieces of it.

A ``RangeSource`` reads ranges of the decrypted image through the read path's range stream, so
only the blob chunks a range touches are decrypted and authenticated. Small reads (TIFF and
WebP headers, walked from offset to offset) go through one cached window, so walking a file's
structure costs about one pass over the parts it visits rather than one chunk per read.

A ``Plan`` is a de-identified file described before any byte of it is produced: literal bytes
(rewritten headers) and ranges of the source (pixel data), with its exact size. Ranges marked
``jpeg`` are JPEG streams (TIFF tiles and strips) checked on the way by ``JpegDeidentifier``
in verify mode: one that carries a metadata segment fails the stream before any byte of that
segment is emitted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from vault.ingest.deid.failures import Malformed
from vault.ingest.deid.jpeg import JpegDeidentifier

RangeStream = Callable[[int, int], AsyncIterator[bytes]]
WINDOW = 256 * 1024  # one blob chunk at the default chunk size


class RangeSource:
    def __init__(self, size: int, stream: RangeStream) -> None:
        self.size = size
        self._stream = stream
        self._window_start = 0
        self._window = b""

    def stream(self, start: int, end: int) -> AsyncIterator[bytes]:
        return self._stream(start, end)

    async def read(self, start: int, end: int) -> bytes:
        """Exactly the bytes [start, end); ``Malformed`` if that is not inside the image."""
        if not 0 <= start <= end <= self.size:
            raise Malformed()
        if start == end:
            return b""
        w0 = self._window_start
        if w0 <= start and end <= w0 + len(self._window):
            return self._window[start - w0:end - w0]
        if end - start > WINDOW:
            return b"".join([piece async for piece in self._stream(start, end)])
        self._window_start = start
        self._window = b"".join([piece async for piece in self._stream(start, min(self.size, start + WINDOW))])
        return self._window[:end - start]


@dataclass(frozen=True)
class Span:
    """Bytes [start, end) of the source; ``jpeg``: a JPEG stream to verify while copying."""

    start: int
    end: int
    jpeg: bool = False


@dataclass
class Plan:
    pieces: list[bytes | Span] = field(default_factory=list)
    size: int = 0

    def add(self, piece: bytes | Span) -> None:
        if isinstance(piece, Span):
            if piece.end == piece.start:
                return
            last = self.pieces[-1] if self.pieces else None
            if isinstance(last, Span) and not last.jpeg and not piece.jpeg and last.end == piece.start:
                self.pieces[-1] = Span(last.start, piece.end)  # one read for adjacent ranges
            else:
                self.pieces.append(piece)
            self.size += piece.end - piece.start
        elif piece:
            self.pieces.append(piece)
            self.size += len(piece)

    def _runs(self) -> list[bytes | list[Span]]:
        """Literal pieces, and runs of spans that follow each other in the source: a run is
        read with one range stream (a tiled TIFF has one JPEG span per tile)."""
        runs: list[bytes | list[Span]] = []
        for piece in self.pieces:
            last = runs[-1] if runs else None
            if isinstance(piece, Span) and isinstance(last, list) and last[-1].end == piece.start:
                last.append(piece)
            else:
                runs.append([piece] if isinstance(piece, Span) else piece)
        return runs

    async def chunks(self, source: RangeSource) -> AsyncIterator[bytes]:
        for run in self._runs():
            if isinstance(run, bytes):
                yield run
                continue
            spans = iter(run)
            span = next(spans)
            left = span.end - span.start
            # JPEG spans go through a checker and are sent as it emits them: a segment is
            # emitted only once it has been judged whole, so no byte of one that fails the
            # check is ever sent.
            checker = JpegDeidentifier(verify=True) if span.jpeg else None
            async for data in source.stream(run[0].start, run[-1].end):
                while data:
                    take, data = data[:left], data[left:]
                    left -= len(take)
                    out = checker.feed(take) if checker is not None else take
                    if out:
                        yield out
                    if not left:
                        if checker is not None:
                            tail = checker.finish()
                            if tail:
                                yield tail
                        span = next(spans, None)  # type: ignore[arg-type]
                        if span is None:
                            break
                        left = span.end - span.start
                        checker = JpegDeidentifier(verify=True) if span.jpeg else None
