"""vault/ingest/renditions.py: sizes, orientation, sRGB, no metadata, hostile input."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageCms, ImageDraw

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


def photograph(width: int, height: int) -> Image.Image:
    """Smooth gradients plus noise: compresses and resamples like a photograph."""
    gradient = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 24)
    return Image.merge("RGB", (gradient, noise, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


def psnr(a: Image.Image, b: Image.Image) -> float:
    import math

    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    # histogram(): 256 counts per band, bands one after another
    mse = sum(count * (i % 256) ** 2 for i, count in enumerate(diff.histogram())) / (3 * a.width * a.height)
    return 10 * math.log10(255 * 255 / mse)


@pytest.mark.parametrize(("mode", "picture"), [("RGB", "photograph"), ("RGB", "lines"), ("L", "photograph"),
                                              ("CMYK", "photograph")])
def test_the_opencv_shrink_after_dct_scaling_is_as_close_to_a_full_decode_as_pillows(mode: str, picture: str) -> None:
    """A 24-megapixel JPEG decoded at 1/4 is shrunk by 0.853 to the preview: OpenCV's Gaussian
    and bilinear must be within half a decibel of Pillow's triangle filter, measured against
    the full decode shrunk with Lanczos."""
    from vault.ingest import shrink

    source = photograph(6000, 4000) if picture == "photograph" else lines(6000, 4000)
    data = encoded(source.convert(mode), "JPEG", quality=90)
    reference = decoded(data).resize((1280, 853), Image.Resampling.LANCZOS)
    drafted = Image.open(io.BytesIO(data))
    drafted.draft(mode, (1280, 853))
    drafted.load()
    assert drafted.size == (1500, 1000) and drafted.mode == mode  # DCT-scaled by 1/4
    shrunk = Image.frombuffer(mode, (1280, 853), shrink.band_limited(drafted, (1280, 853)), "raw", mode, 0, 1)
    pillow = drafted.resize((1280, 853), Image.Resampling.BILINEAR)
    assert psnr(shrunk, reference) > psnr(pillow, reference) - 0.5 > 20


def lines(width: int, height: int) -> Image.Image:
    """One- and two-pixel slanted lines (hairs): what aliases first."""
    im = Image.new("RGB", (width, height), (200, 160, 140))
    draw = ImageDraw.Draw(im)
    for x in range(0, width, 7):
        draw.line([(x, 0), (x + 300, height)], fill=(40, 20, 10), width=1)
    for y in range(0, height, 11):
        draw.line([(0, y), (width, y + 200)], fill=(90, 30, 30), width=2)
    return im


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_are_rendered_through_dct_scaling(mode: str) -> None:
    out = render(encoded(marked(6000, 4000).convert(mode), "JPEG", quality=90), "image/jpeg")
    preview = decoded(out.preview).convert("RGB")
    assert preview.size == (1280, 853)
    if mode == "CMYK":
        assert near(preview.getpixel((3, 3)), RED) and near(preview.getpixel((1275, 848)), BLUE)
    else:
        assert preview.getpixel((3, 3)) != preview.getpixel((1275, 848))


def test_the_daemon_does_not_load_opencv() -> None:
    """OpenCV is for decoder processes (~30 MB and 0.1 s to import): the daemon's modules,
    renditions included, must not import it."""
    import subprocess
    import sys

    code = ("import sys, vault.cli, vault.api.app, vault.services.renditions, vault.ingest.renditions; "
            "print(sorted(m for m in ('cv2', 'numpy') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
