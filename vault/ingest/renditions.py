"""Thumbnails and previews of one image: decode (reduced), orient, sRGB, resize, encode WebP.

Bytes in, bytes out: ``render(data, content_type, limits)`` returns a ``Renditions`` (the
encoded thumbnail and preview) or raises ``RenditionFailed`` with a reason code. This is the
only module that imports Pillow (and pillow-heif, when installed).

What comes out carries no metadata at all: the images encoded have an empty ``info`` (no EXIF,
XMP, IPTC, ICC, comments) and are encoded without any metadata argument. The
EXIF orientation is applied to the pixels, so the output needs no orientation tag; colours
are converted to sRGB from the embedded ICC profile, so the output needs no profile (WebP
without a profile is read as sRGB).

Hostile images: the header's dimensions are checked against ``RenditionLimits`` before any
pixel is decoded (a decompression bomb is refused on its declared size), and Pillow's own bomb
check is kept as a second line. The decode time and memory of one job are bounded by the worker
that calls ``render`` in a separate process (``vault.services.renditions``), since a decoder
cannot be interrupted from inside.

Why one decode at reduced resolution: JPEG decoders can scale by 1/2, 1/4 or 1/8 while
decoding the DCT (``Image.draft``), which is several times cheaper than a full decode of a
24-megapixel photograph. The preview is made from that reduced decode, the thumbnail from the
preview; colours are converted and the orientation applied once, on the preview-sized image.
What one 24-megapixel JPEG costs, by step, is in bench/renditions.py (``split``).
"""

from __future__ import annotations

import io
import struct
import time
import warnings
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

try:  # a well-kept HEIF decoder, optional (extra ``heic``)
    import pillow_heif
except ImportError:  # pragma: no cover - depends on the installation
    pillow_heif = None
else:
    pillow_heif.register_heif_opener()

THUMBNAIL = "thumbnail"
PREVIEW = "preview"
KINDS = (THUMBNAIL, PREVIEW)
# Long edge, in pixels, of each rendition (never enlarged: a smaller image keeps its size).
LONG_EDGE = {THUMBNAIL: 256, PREVIEW: 1280}
OUTPUT_TYPE = "image/webp"
_QUALITY = {THUMBNAIL: 75, PREVIEW: 82}
# WebP effort 0..6: 4 is the encoder's default (~140 ms for a preview here); 0 takes ~35 ms for ~5% more bytes.
_WEBP_METHOD = 0

# Reason codes of a failed job (stored per record, counted per code).
REASON_UNSUPPORTED = "unsupported_format"  # not a raster format we decode: unavailable, not an error
REASON_TOO_LARGE = "too_large"  # declared dimensions over the limits (decompression bomb)
REASON_UNDECODABLE = "undecodable"  # truncated, corrupt or hostile data
REASON_TIMEOUT = "timeout"  # the decoder ran over the job's time limit
REASON_MEMORY = "memory"  # the decoder ran over the job's memory limit
REASONS = (REASON_UNSUPPORTED, REASON_TOO_LARGE, REASON_UNDECODABLE, REASON_TIMEOUT, REASON_MEMORY)

# Content types we try to render; everything else (DICOM, OBJ, PLY, ...) is unavailable.
RASTER_TYPES = frozenset({"image/jpeg", "image/png", "image/tiff", "image/webp"})
HEIF_TYPES = frozenset({"image/heic", "image/heif"})
_FORMATS = {"image/jpeg": {"JPEG", "MPO"}, "image/png": {"PNG"}, "image/tiff": {"TIFF"}, "image/webp": {"WEBP"},
            "image/heic": {"HEIF"}, "image/heif": {"HEIF"}}


def renderable(content_type: str) -> bool:
    """Whether images of this type can get renditions in this installation."""
    return content_type in RASTER_TYPES or (pillow_heif is not None and content_type in HEIF_TYPES)


@dataclass(frozen=True)
class RenditionLimits:
    # Width x height as declared by the header; below Pillow's own bomb warning (89,478,485
    # pixels), which stays in force as a second line.
    max_pixels: int = 89_000_000
    max_dimension: int = 30_000  # either side


@dataclass(frozen=True)
class Renditions:
    thumbnail: bytes
    preview: bytes

    def of(self, kind: str) -> bytes:
        return self.thumbnail if kind == THUMBNAIL else self.preview


class RenditionFailed(Exception):
    """An image that gets no renditions; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def render(data: bytes, content_type: str, limits: RenditionLimits = RenditionLimits(),
           steps: dict[str, float] | None = None) -> Renditions:
    """The thumbnail and preview of ``data`` (an image of ``content_type``), as WebP. When given,
    ``steps`` receives the CPU seconds of this process spent per step (``decode``, ``resize``,
    ``colour`` (sRGB and orientation), ``encode``), for the benchmark."""
    if not renderable(content_type):
        raise RenditionFailed(REASON_UNSUPPORTED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _render(data, content_type, limits, _Clock(steps))
    except RenditionFailed:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RenditionFailed(REASON_TOO_LARGE) from None
    except MemoryError:
        raise RenditionFailed(REASON_MEMORY) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError,
            KeyError, ZeroDivisionError, struct.error):
        # Pillow reports damaged input with any of these (a truncated JPEG is an OSError, a bad
        # TIFF tag a ValueError or KeyError...): all of them mean "this file does not decode".
        raise RenditionFailed(REASON_UNDECODABLE) from None


class _Clock:
    """Process CPU time per step, added to a caller's dict (nothing recorded without one)."""

    def __init__(self, steps: dict[str, float] | None) -> None:
        self._steps = steps
        self._last = time.process_time() if steps is not None else 0.0

    def lap(self, step: str) -> None:
        if self._steps is not None:
            now = time.process_time()
            self._steps[step] = self._steps.get(step, 0.0) + now - self._last
            self._last = now


def _render(data: bytes, content_type: str, limits: RenditionLimits, clock: _Clock) -> Renditions:
    with Image.open(io.BytesIO(data)) as im:
        if im.format not in _FORMATS.get(content_type, ()):
            raise RenditionFailed(REASON_UNDECODABLE)  # bytes of another format than declared
        width, height = im.size
        if width <= 0 or height <= 0:
            raise RenditionFailed(REASON_UNDECODABLE)
        if width > limits.max_dimension or height > limits.max_dimension or width * height > limits.max_pixels:
            raise RenditionFailed(REASON_TOO_LARGE)
        orientation = im.getexif().get(0x0112, 1)  # read before draft/load can change the image
        icc = im.info.get("icc_profile")
        long_edge = LONG_EDGE[PREVIEW]
        draft = None
        if max(width, height) > long_edge and im.format in ("JPEG", "MPO"):
            scale = long_edge / max(width, height)
            # The smallest DCT scaling that still leaves at least the preview's size.
            draft = (max(1, round(width * scale)), max(1, round(height * scale)))
        _load(im, data, draft)
        # Scaled by 1/4 or 1/8: the IDCT kept only the lowest frequencies, so little is left to
        # alias (at 1/2 it keeps more, and OpenCV's shrink lost 0.6-0.8 dB to Pillow's).
        band_limited = im.size[0] * 4 <= width
        pixels = _resizable(im)
    clock.lap("decode")
    # Shrink first, then convert colours and orient the preview-sized image (as libvips'
    # thumbnail does): the profile transform and the transposition touch ~1 MP instead of the
    # decoded size, and the long edge does not depend on the orientation.
    preview = _fit(pixels, LONG_EDGE[PREVIEW], band_limited=band_limited)
    clock.lap("resize")
    preview = _oriented(_to_srgb(preview, icc), orientation)
    clock.lap("colour")
    thumbnail = _fit(preview, LONG_EDGE[THUMBNAIL])
    clock.lap("resize")
    out = Renditions(thumbnail=_encode(thumbnail, THUMBNAIL), preview=_encode(preview, PREVIEW))
    clock.lap("encode")
    return out


def _load(im: Image.Image, data: bytes, draft: tuple[int, int] | None) -> None:
    """Decode ``im`` (opened on ``data``), with DCT scaling to at least ``draft`` if given."""
    if draft is not None:
        im.draft("RGB" if im.mode not in ("L", "CMYK") else im.mode, draft)
    # The whole file is in memory: handing it to the decoder in one piece instead of 64 KiB
    # blocks spares the JPEG decoder a suspension and restart per block (~20 % of its time on a
    # 7 MB photograph).
    im.decodermaxblock = max(im.decodermaxblock, len(data))
    im.load()


def decode_only(data: bytes, scale: int = 1) -> tuple[int, int]:
    """Decode a JPEG at 1/``scale`` by DCT scaling (1, 2, 4 or 8), as ``render`` feeds its
    decoder, and nothing else; returns the decoded size. For bench/renditions.py's floor: what
    the decoder alone costs at each scaling."""
    with Image.open(io.BytesIO(data)) as im:
        _load(im, data, (im.size[0] // scale, im.size[1] // scale) if scale > 1 else None)
        return im.size


def _resizable(im: Image.Image) -> Image.Image:
    """The decoded pixels in a mode that resizes with a real filter and that a profile converts
    from: RGB, L or CMYK (as decoded: colours are converted once, after the resize).
    Transparency is flattened on white, 16-bit grey taken down to 8 bits, palettes expanded."""
    if im.mode in ("RGB", "L", "CMYK"):
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))  # transparency on white
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return im.point(lambda v: v / 256).convert("L")  # 16-bit grey down to 8 bits
    return im.convert("RGB")


def _to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """RGB pixels in sRGB, in a fresh image. With an embedded profile the pixels are converted
    from it; without one they are taken to be sRGB already (what every viewer assumes)."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(im, source, _SRGB, outputMode="RGB")
            if converted is not None:
                return _fresh(converted)
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # an unreadable or mismatched profile: treated as no profile
    return _fresh(im if im.mode == "RGB" else im.convert("RGB"))


_SRGB = ImageCms.createProfile("sRGB")


def _fresh(im: Image.Image) -> Image.Image:
    """The pixels alone: ``im`` (always an image this module made or opened) with its ``info``
    (EXIF, XMP, ICC, comments) emptied; no copy of the pixels is needed for that."""
    im.info = {}
    return im


def _oriented(im: Image.Image, orientation: int) -> Image.Image:
    """Apply EXIF orientation (1..8) to the pixels. ``ImageOps.exif_transpose`` reads the tag
    from the image, which the sRGB copy no longer has; the transposition is the same."""
    if orientation not in range(2, 9):
        return im
    holder = Image.Exif()
    holder[0x0112] = orientation
    im.info["exif"] = holder.tobytes()
    oriented = ImageOps.exif_transpose(im)
    return _fresh(oriented if oriented is not None else im)


# A DCT-scaled JPEG left within this factor of its target is shrunk by ``vault.ingest.shrink``
# (OpenCV); the measurements behind the figure are there.
_OPENCV_MIN_SCALE = 0.75


def _fit(im: Image.Image, long_edge: int, band_limited: bool = False) -> Image.Image:
    """``im`` shrunk to ``long_edge`` (never enlarged).

    A shrink by less than 2 uses a bilinear (triangle) filter: what is left after JPEG DCT
    scaling (which decodes at most 2x the preview's size), or a modest shrink of another
    format. When a JPEG scaled by 1/4 or 1/8 (``band_limited``) is left within
    ``_OPENCV_MIN_SCALE`` of the target, as a 24-megapixel photograph is,
    ``vault.ingest.shrink`` does it with OpenCV for a third of the work at the same quality.
    Larger shrinks (the thumbnail from the preview, undrafted formats) use Lanczos after
    ``reduce`` (box averaging, cheap) has brought the image within 2x of the target (Pillow's
    ``reducing_gap``)."""
    width, height = im.size
    if max(width, height) <= long_edge:
        return im
    scale = long_edge / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if band_limited and scale >= _OPENCV_MIN_SCALE and im.mode in ("RGB", "L", "CMYK"):
        # Imported here, not at the top: the daemon imports this module for its constants and
        # never resizes; only decoder processes load OpenCV (``limit_decoder_process``).
        from vault.ingest import shrink

        return Image.frombuffer(im.mode, size, shrink.band_limited(im, size), "raw", im.mode, 0, 1)
    if scale >= 0.5:
        return _fresh(im.resize(size, Image.Resampling.BILINEAR))
    return _fresh(im.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0))


def _encode(im: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    im.save(out, format="WEBP", quality=_QUALITY[kind], method=_WEBP_METHOD)
    return out.getvalue()


def looks_like(content_type: str, head: bytes) -> bool:
    """Whether the first bytes of an image carry the signature of its declared type: anything
    else fails its job at once, without starting a decoder."""
    if content_type == "image/jpeg":
        return head[:3] == b"\xff\xd8\xff"
    if content_type == "image/png":
        return head[:8] == b"\x89PNG\r\n\x1a\n"
    if content_type == "image/tiff":
        return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    if content_type == "image/webp":
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    if content_type in HEIF_TYPES:
        return head[4:8] == b"ftyp"
    return False


def limit_decoder_process(max_bytes: int) -> None:
    """Initializer of a decoder process: the address space it may add for decoding capped at
    ``max_bytes`` (an image needing more raises ``MemoryError``, reported as ``memory``), and a
    lower CPU priority than the daemon, so renditions run below uploads.

    The cap is counted on top of what the process has mapped once its libraries are loaded
    (Pillow, OpenCV and numpy map ~0.4 GB of address space, little of it resident), so that
    ``rendition_memory`` means memory for the image whatever the libraries' size."""
    import os
    import resource

    from vault.ingest import shrink  # noqa: F401 - loaded before the cap is counted

    resource.setrlimit(resource.RLIMIT_AS, (_mapped_bytes() + max_bytes,) * 2)
    os.nice(10)


def _mapped_bytes() -> int:
    """This process's address space now (``VmSize``), or 0 where /proc does not tell."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
