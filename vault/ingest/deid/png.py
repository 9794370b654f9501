"""PNG for researchers: the chunks that describe pixels and colour, nothing else.

Kept (PNG 3rd edition): IHDR, PLTE, IDAT, IEND; tRNS, cHRM, gAMA, sBIT, sRGB, cICP, mDCv, cLLi,
bKGD, hIST, pHYs; the APNG chunks acTL, fcTL, fdAT; and iCCP with its profile name replaced by
``ICC profile`` (the name is free Latin-1 text). Dropped: every text chunk (tEXt, zTXt, iTXt,
XMP included), eXIf, tIME, sPLT (named palettes), dSIG, and every other chunk, private ones
included, and everything after IEND.

Chunks stream through as they arrive; only an iCCP chunk is held, up to ``MAX_ICC`` bytes (a
larger one is dropped). The file must start with the PNG signature, keep the chunk framing and
end with IEND; otherwise ``Malformed`` is raised where that is found. CRCs of copied chunks are
copied, not checked: a decoder checks them.
"""

from __future__ import annotations

import struct
import zlib

from vault.ingest.deid.failures import Malformed
from vault.ingest.strip import PNG_SIGNATURE

MAX_ICC = 8 << 20
KEPT_CHUNKS = frozenset({
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"sBIT", b"sRGB", b"cICP",
    b"mDCv", b"cLLi", b"bKGD", b"hIST", b"pHYs", b"acTL", b"fcTL", b"fdAT",
})
ICC_NAME = b"ICC profile"
_SIG, _HEAD, _BODY, _ICC, _END = range(5)


class PngDeidentifier:
    def __init__(self) -> None:
        self._state = _SIG
        self._buf = bytearray()
        self._need = 8
        self._remaining = 0  # bytes of the current chunk (data + CRC) still to copy or skip
        self._copy = True
        self._last = False  # the current chunk is IEND
        self.changed = False

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        view = memoryview(bytes(data))
        while view.nbytes:
            state = self._state
            if state == _END:
                self.changed = True  # whatever follows IEND is dropped
                break
            if state == _BODY:
                n = min(self._remaining, view.nbytes)
                if self._copy:
                    out += view[:n]
                view = view[n:]
                self._remaining -= n
                if not self._remaining:
                    self._state, self._need = (_END, 0) if self._last else (_HEAD, 8)
                continue
            take = min(self._need - len(self._buf), view.nbytes)
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self._need:
                self._step(out)
        return bytes(out)

    def _step(self, out: bytearray) -> None:
        buf = self._buf
        if self._state == _SIG:
            if buf != PNG_SIGNATURE:
                raise Malformed()
            out += buf
            buf.clear()
            self._state = _HEAD
            return
        if self._state == _HEAD:
            length = struct.unpack(">I", buf[:4])[0]
            kind = bytes(buf[4:8])
            if length > 0x7FFFFFFF or not kind.isalpha():
                raise Malformed()
            if kind == b"iCCP" and length <= MAX_ICC:
                self._state, self._need = _ICC, 8 + length + 4
                return
            keep = kind in KEPT_CHUNKS
            if keep:
                out += buf
            else:
                self.changed = True
            buf.clear()
            self._remaining, self._copy, self._last = length + 4, keep, kind == b"IEND"
            self._state = _BODY
            return
        if self._state == _ICC:
            data = bytes(buf[8:-4])
            name_end = data.find(b"\x00", 0, 80)
            if name_end < 1:
                self.changed = True  # no valid profile name: the chunk goes
            elif data[:name_end] == ICC_NAME:
                out += buf
            else:
                self.changed = True
                renamed = ICC_NAME + data[name_end:]
                out += struct.pack(">I", len(renamed)) + b"iCCP" + renamed
                out += struct.pack(">I", zlib.crc32(b"iCCP" + renamed) & 0xFFFFFFFF)
            buf.clear()
            self._state, self._need = _HEAD, 8

    def finish(self) -> bytes:
        if self._state != _END:
            raise Malformed()
        return b""
