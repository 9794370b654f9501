"""vault/ingest/renditions.py: sizes, orientation, sRGB, no metadata, hostile input."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageCms

from vault.ingest.renditions import (
    REASON_TOO_LARGE,
    REASON_UNDECODABLE,
    REASON_UNSUPPORTED,
    RenditionFailed,
    RenditionLimits,
    render,
)

# A marker colour in one corner tells where the image's top-left ended up after orientation.
RED, BLUE = (255, 0, 0), (0, 0, 255)


def marked(width: int, height: int) -> Image.Image:
    """Blue, with a red block in the top-left quarter."""
    im = Image.new("RGB", (width, height), BLUE)
    im.paste(RED, (0, 0, width // 2, height // 2))
    return im


def encoded(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def with_orientation(im: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010E] = "Patient Jane Doe"  # ImageDescription: must not survive
    return encoded(im, "JPEG", quality=95, exif=exif.tobytes())


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def near(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(pixel[:3], colour))


@pytest.mark.parametrize(("size", "thumb", "preview"), [
    ((4000, 3000), (256, 192), (1280, 960)),
    ((3000, 4000), (192, 256), (960, 1280)),
    ((200, 100), (200, 100), (200, 100)),  # never enlarged
])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_renditions_fit_their_long_edge(fmt: str, size: tuple[int, int], thumb: tuple[int, int],
                                       preview: tuple[int, int]) -> None:
    content_type = {"JPEG": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "WEBP": "image/webp"}[fmt]
    out = render(encoded(marked(*size), fmt), content_type)
    t, p = decoded(out.thumbnail), decoded(out.preview)
    assert (t.format, p.format) == ("WEBP", "WEBP")
    assert t.size == thumb and p.size == preview
    assert near(t.getpixel((2, 2)), RED) and near(t.getpixel((t.width - 3, t.height - 3)), BLUE)


# Where the red (stored top-left) block must appear once orientation n is applied:
# the display position of the stored image's top-left corner.
CORNER = {1: "tl", 2: "tr", 3: "br", 4: "bl", 5: "tl", 6: "tr", 7: "br", 8: "bl"}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_to_the_pixels(orientation: int) -> None:
    out = render(with_orientation(marked(1600, 800), orientation), "image/jpeg")
    for data, long_edge in ((out.thumbnail, 256), (out.preview, 1280)):
        im = decoded(data)
        rotated = orientation >= 5
        assert im.size == ((long_edge // 2, long_edge) if rotated else (long_edge, long_edge // 2))
        w, h = im.size
        points = {"tl": (3, 3), "tr": (w - 4, 3), "bl": (3, h - 4), "br": (w - 4, h - 4)}
        for corner, xy in points.items():
            assert near(im.getpixel(xy), RED if corner == CORNER[orientation] else BLUE), (orientation, corner)


def test_renditions_carry_no_metadata() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "Patient Jane Doe"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">Jane Doe</x:xmpmeta>'
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encoded(marked(900, 600), "JPEG", exif=exif.tobytes(), xmp=xmp, icc_profile=icc, comment=b"Jane Doe")
    out = render(data, "image/jpeg")
    for blob in (out.thumbnail, out.preview):
        assert b"Jane" not in blob and b"Exif" not in blob and b"XMP" not in blob and b"ICCP" not in blob
        assert b"8BIM" not in blob  # IPTC
        im = decoded(blob)
        assert not im.getexif() and "icc_profile" not in im.info and "xmp" not in im.info


def test_an_embedded_profile_is_converted_to_srgb() -> None:
    lab = ImageCms.createProfile("LAB")  # a profile far from sRGB: unconverted pixels would differ a lot
    wide = ImageCms.ImageCmsProfile(lab)
    srgb = ImageCms.createProfile("sRGB")
    source = Image.new("RGB", (64, 64), (200, 60, 40))
    as_lab = ImageCms.profileToProfile(source, srgb, wide, outputMode="LAB")
    data = encoded(as_lab, "TIFF", icc_profile=wide.tobytes())
    pixel = decoded(render(data, "image/tiff").thumbnail).getpixel((30, 30))
    assert near(pixel, (200, 60, 40)), pixel


def test_a_decompression_bomb_is_refused_on_its_declared_size() -> None:
    bomb = encoded(Image.new("L", (20000, 20000)), "PNG", optimize=True)  # tiny file, 400 MP
    assert len(bomb) < 1_000_000
    with pytest.raises(RenditionFailed) as info:
        render(bomb, "image/png", RenditionLimits(max_pixels=50_000_000))
    assert info.value.reason == REASON_TOO_LARGE


def test_a_truncated_jpeg_is_undecodable() -> None:
    data = encoded(marked(1200, 900), "JPEG")
    with pytest.raises(RenditionFailed) as info:
        render(data[: len(data) // 2], "image/jpeg")
    assert info.value.reason == REASON_UNDECODABLE


@pytest.mark.parametrize("garbage", [b"", b"\xff\xd8\xff", b"not an image at all" * 10])
def test_garbage_is_undecodable(garbage: bytes) -> None:
    with pytest.raises(RenditionFailed) as info:
        render(garbage, "image/jpeg")
    assert info.value.reason == REASON_UNDECODABLE


def test_bytes_of_another_format_than_declared_are_undecodable() -> None:
    with pytest.raises(RenditionFailed) as info:
        render(encoded(marked(100, 100), "PNG"), "image/jpeg")
    assert info.value.reason == REASON_UNDECODABLE


@pytest.mark.parametrize("content_type", ["application/dicom", "model/obj", "model/ply", "application/octet-stream"])
def test_non_raster_types_are_unsupported(content_type: str) -> None:
    with pytest.raises(RenditionFailed) as info:
        render(b"anything", content_type)
    assert info.value.reason == REASON_UNSUPPORTED


def test_png_with_alpha_is_flattened_on_white() -> None:
    im = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    out = decoded(render(encoded(im, "PNG"), "image/png").thumbnail)
    assert near(out.convert("RGB").getpixel((10, 10)), (255, 255, 255))


def test_heic_is_rendered_when_pillow_heif_is_installed() -> None:
    pytest.importorskip("pillow_heif")  # the optional extra `heic`
    data = encoded(marked(1600, 1200), "HEIF", quality=80)
    out = render(data, "image/heic")
    im = decoded(out.thumbnail)
    assert im.size == (256, 192) and near(im.getpixel((3, 3)), RED)
