"""JPEG for researchers: the whole file, SOI to EOI, with marker segments kept by a whitelist.

Unlike ingest stripping (``vault.ingest.strip``), which stops looking at the first SOS, this
follows the file to its EOI: metadata can also sit between the scans of a progressive or
hierarchical JPEG (COM, APPn), and after EOI (MPF secondary images with their own EXIF,
anything appended). Kept: what decoding needs (SOFn, DHT, DAC, DQT, DRI, DNL, DHP, EXP, SOS and
the entropy-coded data after each SOS, JPEG-LS SOF55 and LSE, RSTn and TEM), JFIF APP0 without
its thumbnail, ICC profiles (APP2 ``ICC_PROFILE``) and Adobe APP14 (the colour transform of
CMYK and YCCK files). Everything else goes: APP1 (EXIF with its MakerNote, XMP, extended XMP),
APP2 other than ICC (MPF, FlashPix), APP3 to APP13 (IPTC, Photoshop resources, vendor
blocks), APP15, COM, JPGn, reserved markers, and every byte after EOI.

Entropy-coded data is copied as it arrives: within it a 0xFF byte is followed by 0x00
(stuffing) or a restart marker, and any other 0xFF pair is the next marker. Memory is bounded by
one marker segment (64 KiB).

The file must start with SOI, keep the marker framing and end with EOI; otherwise
``Malformed`` is raised, at the point where it is found. With ``verify=True`` (JPEG streams
embedded in TIFF strips and tiles, whose lengths are fixed in advance) any change it would make
raises ``MetadataInStream`` instead, before a byte of the offending segment is emitted.
"""

from __future__ import annotations

import re

from vault.ingest.deid.failures import Malformed, MetadataInStream

_SIG, _MARKER, _LENGTH, _SEGMENT, _SCAN, _END = range(6)
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_APP0, _APP2, _APP14 = 0xE0, 0xE2, 0xEE
# SOF0-3, 5-7, 9-11, 13-15; DHT, DAC, DQT, DRI, DNL, DHP, EXP; JPEG-LS SOF55 and LSE.
KEPT_MARKERS = frozenset({
    0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF,
    0xC4, 0xCC, 0xDB, 0xDD, 0xDC, 0xDE, 0xDF, 0xF7, 0xF8, _SOS,
})
JFIF_HEADER = b"JFIF\x00"
ICC_HEADER = b"ICC_PROFILE\x00"
ADOBE_HEADER = b"Adobe"
# In entropy-coded data: a 0xFF that is neither stuffing (FF 00) nor a restart marker (FF D0-D7).
_SCAN_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def kept_payload(marker: int, payload: bytes) -> bytes | None:
    """The payload of a marker segment as a researcher gets it, or None when it goes."""
    if marker in KEPT_MARKERS:
        return payload
    if marker == _APP0 and payload.startswith(JFIF_HEADER) and len(payload) >= 14:
        # Version, units and densities stay; the thumbnail (its size and pixels) does not.
        return payload[:12] + b"\x00\x00"
    if marker == _APP2 and payload.startswith(ICC_HEADER):
        return payload
    if marker == _APP14 and payload.startswith(ADOBE_HEADER):
        return payload
    return None


class JpegDeidentifier:
    """Feed the file in pieces of any size; each call returns what is ready to send."""

    def __init__(self, *, verify: bool = False) -> None:
        self._verify = verify
        self._state = _SIG
        self._buf = bytearray()
        self._need = 2
        self._marker = 0
        self._ff_pending = False  # in a scan: the last byte seen was a 0xFF not yet judged
        self.changed = False

    def _change(self) -> None:
        if self._verify:
            raise MetadataInStream()
        self.changed = True

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        data = bytes(data)
        pos, size = 0, len(data)
        while pos < size:
            if self._state == _END:
                self._change()  # whatever follows EOI is dropped
                break
            if self._state == _SCAN:
                pos = self._scan(data, pos, out)
                continue
            take = min(self._need - len(self._buf), size - pos)
            self._buf += data[pos:pos + take]
            pos += take
            if len(self._buf) == self._need:
                self._step(out)
        return bytes(out)

    def _scan(self, data: bytes, pos: int, out: bytearray) -> int:
        """Copy entropy-coded data from ``pos``; returns where to continue."""
        if self._ff_pending:
            follower = data[pos]
            if follower == 0x00 or 0xD0 <= follower <= 0xD7:  # stuffing or a restart marker
                out.append(0xFF)
                out.append(follower)
                self._ff_pending = False
                return pos + 1
            if follower == 0xFF:  # a fill byte before a marker: copied, the next 0xFF is judged
                out.append(0xFF)
                return pos + 1
            self._ff_pending = False  # the end of the scan: a marker follows
            self._buf = bytearray(b"\xff")
            self._state, self._need = _MARKER, 2
            return pos
        found = _SCAN_MARKER.search(data, pos)
        if found is None:
            if data[-1] == 0xFF:  # cannot be judged before the next piece
                out += memoryview(data)[pos:-1]
                self._ff_pending = True
            else:
                out += memoryview(data)[pos:]
            return len(data)
        out += memoryview(data)[pos:found.start()]
        self._ff_pending = True
        return found.start() + 1

    def _step(self, out: bytearray) -> None:
        buf = self._buf
        state = self._state
        if state == _SIG:
            if buf != b"\xff\xd8":
                raise Malformed()
            out += buf
            buf.clear()
            self._state, self._need = _MARKER, 2
        elif state == _MARKER:
            if buf[0] != 0xFF:
                raise Malformed()
            marker = buf[1]
            if marker == 0xFF:  # fill byte before a marker
                out.append(0xFF)
                del buf[0]
                return
            if marker == _EOI:
                out += buf
                buf.clear()
                self._state = _END
                return
            if marker in (0x00, _SOI):
                raise Malformed()
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length, nothing held
                out += buf
                buf.clear()
                return
            self._marker = marker
            self._state, self._need = _LENGTH, 4
        elif state == _LENGTH:
            length = int.from_bytes(buf[2:4], "big")
            if length < 2:
                raise Malformed()
            self._state, self._need = _SEGMENT, 2 + length
            if len(buf) == self._need:
                self._step(out)
        elif state == _SEGMENT:
            marker = self._marker
            payload = bytes(buf[4:])
            kept = kept_payload(marker, payload)
            if kept is None:
                self._change()
            elif kept == payload:
                out += buf
            else:
                self._change()
                out += bytes([0xFF, marker]) + (len(kept) + 2).to_bytes(2, "big") + kept
            buf.clear()
            self._state, self._need = (_SCAN, 0) if marker == _SOS else (_MARKER, 2)

    def finish(self) -> bytes:
        """Nothing is left to send once EOI was seen; a file that ends before it is
        ``Malformed``."""
        if self._state != _END:
            raise Malformed()
        return b""
