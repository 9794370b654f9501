"""Content verification at ingest: the first bytes of a file must be of its declared type.

A content type is the client's claim, and a file stored under a false one is later exported to
the patient, or opened by a viewer, as something it is not. So before any byte is stored the
head of the file is checked against its type's signature (docs/format.md, "Content
verification"); a mismatch is ``ContentMismatch`` (415 ``content_mismatch``) and nothing is
stored. This is a check of the signature, not a parse of the whole file: a file that starts
right and is broken further on is stored as sent (the de-identifiers refuse what they cannot
parse).

Binary formats are judged by their magic numbers (JPEG, PNG, TIFF, WebP, HEIC/HEIF, DICOM
Part 10). The two text formats have none that every writer emits:

* PLY must start with the line ``ply`` (LF or CR LF), as its specification requires.
* OBJ is free text. It matches when the inspected head (``TEXT_HEAD``, or the whole file if
  shorter) is UTF-8 text without control characters other than tab, CR, LF and form feed, and
  its first line (after a UTF-8 byte order mark, if any) that is neither blank nor a ``#``
  comment begins with an OBJ statement keyword (``v``, ``vt``, ``vn``, ``f``, ``o``, ``g``,
  ``mtllib``, ...) followed by white space or the end of the line. An OBJ file whose comments fill the whole head without a statement is
  refused.

A type with no rule here (one an operator added to ``allowed_content_types``) is not checked.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

from vault.errors import ContentMismatch

# Bytes an OBJ file is judged by (at most): its first statement must lie within them.
TEXT_HEAD = 64 * 1024
DICOM_PREAMBLE = 128

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"})
_OBJ_KEYWORDS = frozenset(
    b"v vt vn vp f l p o g s mg mtllib usemtl usemap maplib cstype deg bmat step curv curv2 surf parm trim "
    b"hole scrv sp end con bevel c_interp d_interp lod shadow_obj trace_obj ctech stech call csh".split()
)
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which some Windows tools write
# Control characters a text file may not hold: all but TAB, LF, FF, CR.
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f\x7f]")

# A verdict on the head seen so far: True (matches), False (does not), None (need more bytes).
Verdict = bool | None


def _jpeg(head: bytes, complete: bool) -> Verdict:
    return _prefix(head, complete, b"\xff\xd8\xff")


def _png(head: bytes, complete: bool) -> Verdict:
    return _prefix(head, complete, b"\x89PNG\r\n\x1a\n")


def _tiff(head: bytes, complete: bool) -> Verdict:
    if len(head) < 4:
        return False if complete else None
    # Classic TIFF (42) and BigTIFF (43), in either byte order.
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _webp(head: bytes, complete: bool) -> Verdict:
    if len(head) < 12:
        return False if complete else None
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _heif(head: bytes, complete: bool) -> Verdict:
    """An ISO BMFF file whose first box is ``ftyp`` naming a HEIF brand, as major brand or
    among the compatible ones (an iPhone's HEIC says ``heic``; others say ``mif1``)."""
    if len(head) < 8:
        return False if complete else None
    size = int.from_bytes(head[:4], "big")
    if head[4:8] != b"ftyp" or size < 16 or size > 4096:
        return False
    if len(head) < size:
        return False if complete else None
    brands = [head[8:12]] + [head[i:i + 4] for i in range(16, size - 3, 4)]
    return any(brand in _HEIF_BRANDS for brand in brands)


def _dicom(head: bytes, complete: bool) -> Verdict:
    """DICOM Part 10: a 128-byte preamble, then ``DICM`` (PS3.10 section 7.1)."""
    end = DICOM_PREAMBLE + 4
    if len(head) < end:
        return False if complete else None
    return head[DICOM_PREAMBLE:end] == b"DICM"


def _ply(head: bytes, complete: bool) -> Verdict:
    if head.startswith((b"ply\n", b"ply\r\n")):
        return True
    if len(head) < 5 and not complete and (b"ply\r\n".startswith(head) or b"ply\n".startswith(head)):
        return None
    return False


def _obj(head: bytes, complete: bool) -> Verdict:
    if _CONTROL.search(head[:TEXT_HEAD]):
        return False
    window = head[:TEXT_HEAD]
    lines = window.removeprefix(_BOM).split(b"\n")
    # The last line may be cut by the window or the pieces received so far: not judged yet.
    whole = lines if complete and len(head) <= TEXT_HEAD else lines[:-1]
    for line in whole:
        words = line.strip(b" \t\r\f").split(None, 1)
        if not words or words[0].startswith(b"#"):
            continue
        if words[0] not in _OBJ_KEYWORDS:
            return False
        return _text(window, complete and len(head) <= TEXT_HEAD)
    if len(head) >= TEXT_HEAD or complete:
        return False
    return None


def _text(window: bytes, complete: bool) -> bool:
    """UTF-8, allowing a character cut in two at the end of an incomplete window."""
    for cut in range(1 if complete else 4):
        try:
            window[:len(window) - cut].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def _prefix(head: bytes, complete: bool, signature: bytes) -> Verdict:
    if len(head) >= len(signature):
        return head.startswith(signature)
    if signature.startswith(head) and not complete:
        return None
    return False


RULES: dict[str, Callable[[bytes, bool], Verdict]] = {
    "image/jpeg": _jpeg,
    "image/png": _png,
    "image/tiff": _tiff,
    "image/webp": _webp,
    "image/heic": _heif,
    "image/heif": _heif,
    "application/dicom": _dicom,
    "model/obj": _obj,
    "model/ply": _ply,
}


def matches(content_type: str, head: bytes, *, complete: bool) -> Verdict:
    """Whether ``head`` (the first bytes of a file; ``complete``: the whole file) is of
    ``content_type``; None while more bytes are needed to tell. True for types without a rule."""
    rule = RULES.get(content_type)
    return True if rule is None else rule(head, complete)


async def verified(body: AsyncIterator[bytes], content_type: str) -> AsyncIterator[bytes]:
    """``body`` once its head has matched ``content_type``; ``ContentMismatch`` otherwise.

    The pieces are held back until the verdict (a few bytes; up to ``TEXT_HEAD`` for OBJ), so
    nothing of a mismatching file reaches the stripper, the sealer or the store. Await the
    result: the verdict is reached before this returns."""
    if content_type not in RULES:
        return body
    held: list[bytes] = []
    head = b""
    verdict: Verdict = None
    async for piece in body:
        held.append(piece)
        if len(head) < TEXT_HEAD:
            head += piece[:TEXT_HEAD]
        verdict = matches(content_type, head, complete=False)
        if verdict is not None:
            break
    else:
        verdict = matches(content_type, head, complete=True)
    if not verdict:
        raise ContentMismatch(f"file content is not {content_type}")
    return _chain(held, body)


async def _chain(held: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for piece in held:
        yield piece
    held.clear()
    async for piece in rest:
        yield piece
