"""Lossless, streaming removal of location and other metadata from JPEG and PNG at ingest.

Policy (config ``strip_metadata``):

* ``none``: bytes pass through untouched.
* ``gps`` (default): the GPS IFD is removed from EXIF (JPEG APP1 ``Exif``, PNG ``eXIf``) by
  rewriting the TIFF structure in place (``vault.ingest.exif``); where that cannot be done with
  certainty the whole EXIF block is dropped. XMP packets that name a location property
  (``mentions_location``: ``GPS``, ``City``, ``Country``... in UTF-8, UTF-16 or UTF-32) are
  dropped: JPEG APP1 XMP, extended XMP (judged as one group of segments), other APP1 packets,
  PNG ``XML:com.adobe.xmp`` text. In JPEG APP13 (Photoshop image resources) the IPTC location
  datasets are removed from the IPTC-NAA resource (``vault.ingest.location``), XMP and EXIF
  resources are treated like their APP1 forms, and a block that does not parse is dropped.
  PNG text chunks holding raw EXIF/XMP/IPTC profiles (``Raw profile type ...``), which cannot be
  inspected safely, are dropped.
* ``all``: JPEG APP1 (EXIF, XMP), APP13 (IPTC / Photoshop) and COM segments, and PNG ``eXIf``,
  ``tEXt``, ``iTXt`` and ``zTXt`` chunks are dropped. Orientation goes with EXIF: clients that
  need it must record it elsewhere.

Pixels are never decoded: only whole metadata segments/chunks are removed or rewritten, every
other byte is copied. Memory is bounded: a JPEG segment is at most 64 KiB; a PNG chunk is
held only when it has to be inspected (text, ``eXIf``) and only up to ``MAX_INSPECTED`` bytes
(a larger one of those types is dropped unread); every other chunk (``IDAT``...) streams
through as it arrives. JPEG is parsed up to the first SOS (start of scan): the metadata
segments come before it, and everything from SOS on (entropy-coded data, later scans, data
after EOI such as MPF secondary images) is passed through unchanged. PNG chunks are tracked to
IEND, so text chunks after IDAT are handled too.

Input that does not start with the format's signature, or that breaks the format's framing,
is passed through from that point unchanged: a content type is the client's claim, and
refusing or "repairing" a file is not this module's business. Only a metadata segment cut
short by the end of the input is dropped rather than emitted half.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Protocol

from vault.errors import TooLarge
from vault.ingest.exif import UnsafeExif, remove_gps
from vault.ingest.location import UnsafeResources, mentions_location, remove_location_from_resources

POLICIES = ("gps", "all", "none")
MAX_INSPECTED = 8 << 20
EXIF_HEADER = b"Exif\x00\x00"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXTENSION_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Stripper(Protocol):
    changed: bool

    @property
    def passing(self) -> bool:
        """True once every further byte passes unchanged (nothing more can be stripped)."""

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


# JPEG -------------------------------------------------------------------------------------
_J_SIG, _J_MARKER, _J_LENGTH, _J_SEGMENT, _J_PASS = range(5)
_APP1, _APP13, _COM, _SOS, _EOI = 0xE1, 0xED, 0xFE, 0xDA, 0xD9
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0..7: no length field


class JpegStripper:
    """Segments between SOI and SOS: each is read whole (at most 64 KiB) and kept, rewritten
    or dropped; from SOS on, bytes pass through."""

    def __init__(self, policy: str) -> None:
        self._policy = policy
        self._state = _J_SIG
        self._buf = bytearray()
        self._marker = 0
        self._need = 2
        self._drop_xmp_extensions = False
        # Extended XMP segments are judged together: a property name may be cut in two at a
        # segment boundary. They are held (bounded by MAX_INSPECTED) until another segment.
        self._extensions: list[bytes] = []
        self._extensions_size = 0
        self._extensions_dropped = False
        self.changed = False

    @property
    def passing(self) -> bool:
        return self._state == _J_PASS and not self._buf and not self._extensions

    def feed(self, data: bytes) -> bytes:
        if self._state == _J_PASS:
            return data
        out = bytearray()
        view = memoryview(data)
        while view.nbytes:
            if self._state == _J_PASS:
                out += view
                break
            take = min(self._need - len(self._buf), view.nbytes)
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self._need:
                self._step(out)
        return bytes(out)

    def _pass(self, out: bytearray) -> None:
        self._flush_extensions(out)
        out += self._buf
        self._buf.clear()
        self._state = _J_PASS

    def _step(self, out: bytearray) -> None:
        buf = self._buf
        if self._state == _J_SIG:
            if bytes(buf) != b"\xff\xd8":
                self._pass(out)
                return
            out += buf
            buf.clear()
            self._state, self._need = _J_MARKER, 2
        elif self._state == _J_MARKER:
            if buf[0] != 0xFF:
                self._pass(out)
                return
            if buf[1] == 0xFF:  # fill byte before a marker: copy it, look again
                out.append(0xFF)
                del buf[0]
                return
            marker = buf[1]
            if marker in (_SOS, _EOI) or marker in (0x00, 0xD8):
                self._pass(out)  # start of scan (or end, or not a marker): the rest passes
                return
            if marker in _STANDALONE:
                self._flush_extensions(out)
                out += buf
                buf.clear()
                return
            self._marker = marker
            self._state, self._need = _J_LENGTH, 4
        elif self._state == _J_LENGTH:
            length = struct.unpack(">H", buf[2:4])[0]
            if length < 2:
                self._pass(out)
                return
            self._state, self._need = _J_SEGMENT, 2 + length
            if len(buf) == self._need:
                self._step(out)
        elif self._state == _J_SEGMENT:
            payload = bytes(buf[4:])
            if self._policy == "gps" and self._marker == _APP1 and payload.startswith(XMP_EXTENSION_HEADER):
                self._hold_extension(bytes(buf))
                buf.clear()
                self._state, self._need = _J_MARKER, 2
                return
            self._flush_extensions(out)
            kept = self._rewrite(self._marker, payload)
            if kept == payload:
                out += buf
            else:
                self.changed = True
                if kept is not None:
                    out += bytes([0xFF, self._marker]) + struct.pack(">H", len(kept) + 2) + kept
            buf.clear()
            self._state, self._need = _J_MARKER, 2

    def _rewrite(self, marker: int, payload: bytes) -> bytes | None:
        """The segment payload to keep (possibly rewritten), or None to drop the segment."""
        policy = self._policy
        if policy == "all":
            return None if marker in (_APP1, _APP13, _COM) else payload
        if marker == _APP13:
            try:
                return remove_location_from_resources(payload)
            except UnsafeResources:
                return None
        if marker != _APP1:
            return payload
        if payload.startswith(EXIF_HEADER):
            try:
                return EXIF_HEADER + remove_gps(payload[len(EXIF_HEADER):])
            except UnsafeExif:
                return None
        if mentions_location(payload):  # XMP (or another APP1 packet) naming a place
            if payload.startswith(XMP_HEADER):
                self._drop_xmp_extensions = True
            return None
        return payload

    def _hold_extension(self, segment: bytes) -> None:
        if self._extensions_dropped:
            self.changed = True
            return
        self._extensions.append(segment)
        self._extensions_size += len(segment)
        if self._extensions_size > MAX_INSPECTED:
            self._extensions_dropped = True  # too much to judge: the whole group goes
            self._extensions.clear()
            self.changed = True

    def _flush_extensions(self, out: bytearray) -> None:
        """Emit or drop the held extended XMP segments, judged as one text."""
        if not self._extensions and not self._extensions_dropped:
            return
        held, self._extensions = self._extensions, []
        self._extensions_size = 0
        dropped, self._extensions_dropped = self._extensions_dropped, False
        if dropped or self._drop_xmp_extensions or mentions_location(_extended_text(held)):
            self.changed = True
            return
        for segment in held:
            out += segment

    def finish(self) -> bytes:
        out = bytearray()
        # A metadata segment cut off by the end of the input is dropped, not emitted half.
        if self._state == _J_SEGMENT and self._policy != "none" and self._marker in (_APP1, _APP13, _COM):
            self.changed = True
            self._buf.clear()
        self._flush_extensions(out)
        out += self._buf
        self._buf.clear()
        return bytes(out)


def _extended_text(segments: list[bytes]) -> bytes:
    """The extended XMP carried by APP1 segments, pieces put in the order of their offsets:
    marker and length (4) || header || GUID (32) || full length (4) || offset (4) || piece."""
    start = 4 + len(XMP_EXTENSION_HEADER) + 32
    pieces = sorted((s[start + 4:start + 8], s[start + 8:]) for s in segments)
    return b"".join(piece for _, piece in pieces)


# PNG --------------------------------------------------------------------------------------
_P_SIG, _P_HEAD, _P_BODY, _P_INSPECT, _P_PASS = range(5)
_TEXT_CHUNKS = (b"tEXt", b"iTXt", b"zTXt")


class PngStripper:
    """Chunk by chunk to IEND: inspected chunks are held (bounded), others stream through."""

    def __init__(self, policy: str) -> None:
        self._policy = policy
        self._state = _P_SIG
        self._buf = bytearray()
        self._need = 8
        self._remaining = 0  # bytes of the current chunk (data + CRC) still to copy or skip
        self._copy = True
        self._type = b""
        self._ended = False  # IEND seen: once its CRC is copied, whatever trails passes as is
        self.changed = False

    @property
    def passing(self) -> bool:
        return self._state == _P_PASS and not self._buf

    def feed(self, data: bytes) -> bytes:
        if self._state == _P_PASS:
            return data
        out = bytearray()
        view = memoryview(data)
        while view.nbytes:
            state = self._state
            if state == _P_PASS:
                out += view
                break
            if state == _P_BODY:
                n = min(self._remaining, view.nbytes)
                if self._copy:
                    out += view[:n]
                view = view[n:]
                self._remaining -= n
                if not self._remaining:
                    self._state, self._need = (_P_PASS, 0) if self._ended else (_P_HEAD, 8)
                continue
            take = min(self._need - len(self._buf), view.nbytes)
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self._need:
                self._step(out)
        return bytes(out)

    def _step(self, out: bytearray) -> None:
        buf = self._buf
        if self._state == _P_SIG:
            signed = bytes(buf) == PNG_SIGNATURE
            out += buf
            buf.clear()
            self._state = _P_HEAD if signed else _P_PASS
            return
        if self._state == _P_HEAD:
            length = struct.unpack(">I", buf[:4])[0]
            kind = bytes(buf[4:8])
            if length > 0x7FFFFFFF or not kind.isalpha():
                out += buf
                buf.clear()
                self._state = _P_PASS
                return
            self._type = kind
            action = self._action(kind, length)
            if action == "inspect":
                self._state, self._need = _P_INSPECT, 8 + length + 4
                return
            if action == "copy":
                out += buf
            else:
                self.changed = True
            buf.clear()
            self._remaining, self._copy = length + 4, action == "copy"
            self._state = _P_BODY
            self._ended = kind == b"IEND"
            return
        if self._state == _P_INSPECT:
            data = bytes(buf[8:-4])
            kept = self._inspect(self._type, data)
            if kept is None:
                self.changed = True
            elif kept == data:
                out += buf
            else:
                self.changed = True
                out += struct.pack(">I", len(kept)) + self._type + kept
                out += struct.pack(">I", zlib.crc32(self._type + kept) & 0xFFFFFFFF)
            buf.clear()
            self._state, self._need = _P_HEAD, 8

    def _action(self, kind: bytes, length: int) -> str:
        """copy | drop | inspect, decided from the chunk type (and size) alone."""
        if self._policy == "all":
            return "drop" if kind == b"eXIf" or kind in _TEXT_CHUNKS else "copy"
        if kind == b"eXIf" or kind in _TEXT_CHUNKS:
            return "inspect" if length <= MAX_INSPECTED else "drop"
        return "copy"

    def _inspect(self, kind: bytes, data: bytes) -> bytes | None:
        """gps policy: the chunk data to keep (possibly rewritten), or None to drop it."""
        if kind == b"eXIf":
            # The chunk is a bare TIFF; some writers keep JPEG's "Exif\0\0" in front of it.
            prefix = EXIF_HEADER if data.startswith(EXIF_HEADER) else b""
            try:
                return prefix + remove_gps(data[len(prefix):])
            except UnsafeExif:
                return None
        keyword = data.split(b"\x00", 1)[0]
        if keyword.startswith(b"Raw profile type"):
            return None  # hex-encoded EXIF/XMP written by ImageMagick & co.: not parsed here
        if keyword != b"XML:com.adobe.xmp":
            return data
        try:
            text = _text_of(kind, data[len(keyword) + 1:])
        except (IndexError, ValueError, zlib.error):
            return None
        return None if text is None or mentions_location(text) else data

    def finish(self) -> bytes:
        if self._state == _P_INSPECT and self._policy != "none":
            self.changed = True  # an inspected chunk cut short: dropped, not emitted half
            self._buf.clear()
        out = bytes(self._buf)
        self._buf.clear()
        return out


def _inflate(data: bytes) -> bytes | None:
    """Decompressed text, or None if it would exceed MAX_INSPECTED (then it is dropped)."""
    inflater = zlib.decompressobj()
    text = inflater.decompress(data, MAX_INSPECTED)
    return None if inflater.unconsumed_tail else text


def _text_of(kind: bytes, rest: bytes) -> bytes | None:
    """The text of a PNG text chunk after its keyword and NUL (PNG spec 11.3.4)."""
    if kind == b"tEXt":
        return rest
    if kind == b"zTXt":  # method (1 byte) || zlib stream
        return _inflate(rest[1:])
    # iTXt: compressed flag (1) || method (1) || language NUL || translated keyword NUL || text
    compressed = rest[0] == 1
    lang_end = rest.index(b"\x00", 2)
    text = rest[rest.index(b"\x00", lang_end + 1) + 1:]
    return _inflate(text) if compressed else text


def new_stripper(content_type: str, policy: str) -> Stripper | None:
    """The stripper for a content type under a policy, or None when bytes pass untouched."""
    if policy not in POLICIES:
        raise ValueError("strip policy must be gps, all or none")
    if policy == "none":
        return None
    if content_type == "image/jpeg":
        return JpegStripper(policy)
    if content_type == "image/png":
        return PngStripper(policy)
    return None


class ReceivedStream:
    """The upload body as stored: stripped per policy, with the size and SHA-256 of the bytes
    as *received* (what a client's ``sha256`` refers to) and the size limit enforced on them.

    Iterate once. The received bytes are not hashed during iteration (that would be on the
    event loop: a quarter of its time under 16 concurrent uploads): they are queued, and the
    caller hands ``take_unhashed()`` to ``hash_received`` wherever it does its other per-byte
    work (the service's crypto thread, next to sealing). Once iteration has ended and every
    queued piece has been hashed, ``received_sha256`` is the digest of the received bytes and
    ``changed`` says whether the stored bytes differ from them.
    """

    def __init__(self, body: AsyncIterator[bytes], content_type: str, policy: str, limit: int) -> None:
        self._body = body
        self._stripper = new_stripper(content_type, policy)
        self._limit = limit
        # Without a stripper the stored bytes are the received ones: their digest is the
        # sealer's, and hashing them twice would only cost time.
        self._hash: hashlib._Hash | None = hashlib.sha256() if self._stripper is not None else None
        self._unhashed: list[bytes] = []
        self.received_size = 0

    @property
    def changed(self) -> bool:
        return self._stripper is not None and self._stripper.changed

    @property
    def received_sha256(self) -> str | None:
        """Digest of the received bytes, or None when they are the stored bytes (then the
        stored digest is theirs too)."""
        if self._hash is None:
            return None
        if self._unhashed:
            raise RuntimeError("received bytes are still queued for hashing")
        return self._hash.hexdigest()

    @property
    def hashing_pending(self) -> bool:
        """Whether received pieces are queued for ``hash_received``."""
        return bool(self._unhashed)

    def take_unhashed(self) -> list[bytes]:
        """The received pieces queued since the last call, in order, for ``hash_received``."""
        pieces, self._unhashed = self._unhashed, []
        return pieces

    def hash_received(self, pieces: list[bytes]) -> None:
        """Add ``pieces`` (from ``take_unhashed``, in the order taken) to the received digest.
        Thread-safe against the event loop as long as the caller awaits it before iterating
        further (the digest is then touched by one thread at a time)."""
        digest = self._hash
        if digest is not None:
            for piece in pieces:
                digest.update(piece)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stripper = self._stripper
        async for piece in self._body:
            self.received_size += len(piece)
            if self.received_size > self._limit:
                raise TooLarge(f"image exceeds the limit of {self._limit} bytes")
            if stripper is None:
                yield piece
                continue
            if self._hash is not None:
                self._unhashed.append(piece)
            out = stripper.feed(piece)
            if stripper.passing and not stripper.changed and self._hash is not None:
                # Nothing was stripped and nothing more can be: what is stored is exactly what
                # was received, so the stored digest serves for both (no second SHA-256 pass).
                self._hash = None
                self._unhashed = []
            if out:
                yield out
        if stripper is not None:
            tail = stripper.finish()
            if tail:
                yield tail
