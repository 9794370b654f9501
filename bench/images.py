"""Synthetic but realistic clinical JPEGs for the benchmarks, generated once into a cache.

Real sizes matter more than real content: a storage benchmark on 50 KB images measures request
overhead, one on 8 MB images measures the data path. So the images here have the resolutions of
the cameras clinics use (total-body photography: 12-45 MP; dermoscopy: 5-12 MP) and the JPEG
sizes those produce (2-8 MB and 1-3 MB), and they carry the EXIF a camera writes, GPS included
(which imagevault strips on ingest by default, so that path is exercised too).

Content: a skin-toned gradient with a few darker lesion-like blobs, plus Gaussian sensor noise.
Noise is what makes JPEGs big, so its strength is calibrated per image (on a small sample, by
bisection) to land on the target size. Noise is drawn once per strength as a tile and pasted
with random offsets: JPEG codes 8x8 blocks independently, so tiling does not shrink the file,
and it makes generation ~10x faster than drawing noise for every pixel.

Only Pillow (a core dependency) and optionally piexif (test extra) are needed, so the smoke
test can use this module too. ``python -m bench.images`` fills the default cache.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "bench" / ".cache" / "images"
GENERATOR_VERSION = 1  # bump to invalidate caches when the recipe changes

# (width, height) of cameras in clinical use.
TOTAL_BODY_RESOLUTIONS = ((4000, 3000), (6000, 4000), (6960, 4640), (8256, 5504))
DERMOSCOPY_RESOLUTIONS = ((2592, 1944), (3000, 2000), (4000, 3000))
_TILE = 1024


@dataclass(frozen=True)
class ImageSpec:
    name: str
    kind: str  # "total_body" | "dermoscopic" | "probe"
    width: int
    height: int
    target_bytes: int
    seed: int


@dataclass(frozen=True)
class BenchImage:
    """One cached image: its bytes are read on demand (the whole set may be hundreds of MB)."""

    name: str
    kind: str
    path: Path
    size: int
    sha256: str
    width: int
    height: int

    def read(self) -> bytes:
        return self.path.read_bytes()


def default_specs(total_body: int = 24, dermoscopy: int = 8, seed: int = 1) -> list[ImageSpec]:
    """A mix of sizes: total-body 2-8 MB, dermoscopy 1-3 MB, plus one 4 MB probe image
    (the latency goal is stated for a 4 MB image)."""
    rng = random.Random(seed)
    specs = []
    for i in range(total_body):
        width, height = TOTAL_BODY_RESOLUTIONS[i % len(TOTAL_BODY_RESOLUTIONS)]
        # Spread targets evenly over 2-8 MB so every run has the same size mix.
        target = int((2 + 6 * (i + 0.5) / total_body) * 1e6)
        specs.append(ImageSpec(f"tb-{i:03d}", "total_body", width, height, target, rng.randrange(1 << 30)))
    for i in range(dermoscopy):
        width, height = DERMOSCOPY_RESOLUTIONS[i % len(DERMOSCOPY_RESOLUTIONS)]
        target = int((1 + 2 * (i + 0.5) / dermoscopy) * 1e6)
        specs.append(ImageSpec(f"ds-{i:03d}", "dermoscopic", width, height, target, rng.randrange(1 << 30)))
    specs.append(ImageSpec("probe-4mb", "probe", 6000, 4000, 4_000_000, rng.randrange(1 << 30)))
    return specs


def small_specs(count: int = 4, seed: int = 1) -> list[ImageSpec]:
    """Tiny images (for the smoke test): same recipe, ~50-150 KB."""
    rng = random.Random(seed)
    return [
        ImageSpec(f"small-{i:03d}", "total_body" if i % 2 == 0 else "dermoscopic", 640, 480,
                  50_000 + 30_000 * i, rng.randrange(1 << 30))
        for i in range(count)
    ]


# generation -------------------------------------------------------------------------------
_noise_tiles: dict[int, Image.Image] = {}


def _noise_tile(sigma: int) -> Image.Image:
    """An RGB tile of zero-centred (offset 128) Gaussian noise of the given strength."""
    tile = _noise_tiles.get(sigma)
    if tile is None:
        bands = [Image.effect_noise((_TILE, _TILE), sigma) for _ in range(3)]
        tile = _noise_tiles[sigma] = Image.merge("RGB", bands)
    return tile


def _noise_field(width: int, height: int, sigma: int, rng: random.Random) -> Image.Image:
    field = Image.new("RGB", (width, height))
    tile = _noise_tile(sigma)
    for y in range(0, height, _TILE):
        for x in range(0, width, _TILE):
            # Random rotation/offset per paste, so neighbouring tiles are not identical.
            piece = tile.transpose(rng.choice((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                               Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM)))
            field.paste(piece, (x, y))
    return field


def _skin(width: int, height: int, rng: random.Random) -> Image.Image:
    """A smooth skin-toned image with shading and a few darker lesion-like blobs."""
    small_w, small_h = 64, max(8, 64 * height // width)
    base = Image.new("RGB", (small_w, small_h))
    tone = (rng.randint(170, 235), rng.randint(120, 180), rng.randint(95, 150))
    pixels = base.load()
    for y in range(small_h):
        for x in range(small_w):
            shade = 0.75 + 0.25 * (1 - abs(x / small_w - 0.5) * 2) - 0.1 * y / small_h
            pixels[x, y] = tuple(int(c * shade) for c in tone)
    image = base.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 12)):
        r = rng.randint(width // 200, width // 40)
        cx, cy = rng.randrange(width), rng.randrange(height)
        colour = (rng.randint(60, 120), rng.randint(35, 80), rng.randint(25, 60))
        draw.ellipse((cx - r, cy - int(r * rng.uniform(0.6, 1.4)), cx + r, cy + r), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(radius=max(1, width // 1500)))


def _exif(spec: ImageSpec, rng: random.Random) -> bytes | None:
    """Camera EXIF with GPS (as a phone or camera with location services would write)."""
    try:
        import piexif
    except ImportError:
        return None
    lat, lon = rng.uniform(50.0, 56.0), rng.uniform(-4.0, 1.5)

    def dms(value: float) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        value = abs(value)
        degrees = int(value)
        minutes = int((value - degrees) * 60)
        seconds = round(((value - degrees) * 60 - minutes) * 60 * 100)
        return ((degrees, 1), (minutes, 1), (seconds, 100))

    camera = {"total_body": b"VECTRA-WB360", "dermoscopic": b"DermLite-DL5"}.get(spec.kind, b"Generic")
    exif = {
        "0th": {
            piexif.ImageIFD.Make: b"Bench Medical Imaging",
            piexif.ImageIFD.Model: camera,
            piexif.ImageIFD.Software: b"imagevault-bench 1",
            piexif.ImageIFD.DateTime: b"2026:11:20 10:15:00",
        },
        "Exif": {
            piexif.ExifIFD.DateTimeOriginal: b"2026:11:20 10:15:00",
            piexif.ExifIFD.PixelXDimension: spec.width,
            piexif.ExifIFD.PixelYDimension: spec.height,
            piexif.ExifIFD.FocalLength: (50, 1),
            piexif.ExifIFD.ExposureTime: (1, 125),
            piexif.ExifIFD.FNumber: (8, 1),
            piexif.ExifIFD.ISOSpeedRatings: 200,
        },
        "GPS": {
            piexif.GPSIFD.GPSLatitudeRef: b"N",
            piexif.GPSIFD.GPSLatitude: dms(lat),
            piexif.GPSIFD.GPSLongitudeRef: b"W" if lon < 0 else b"E",
            piexif.GPSIFD.GPSLongitude: dms(lon),
            piexif.GPSIFD.GPSAltitude: (rng.randint(0, 300), 1),
        },
    }
    return piexif.dump(exif)


def _encode(image: Image.Image, quality: int, exif: bytes | None) -> bytes:
    out = io.BytesIO()
    kwargs = {"quality": quality, "subsampling": 0}
    if exif is not None:
        kwargs["exif"] = exif
    image.save(out, "JPEG", **kwargs)
    return out.getvalue()


def _compose(skin: Image.Image, sigma: int, rng: random.Random) -> Image.Image:
    noise = _noise_field(skin.width, skin.height, sigma, rng)
    # skin + (noise - 128): ImageChops.add computes (a + b) / scale + offset.
    return ImageChops.add(skin, noise, scale=1.0, offset=-128)


def generate(spec: ImageSpec, quality: int = 92) -> bytes:
    """The JPEG bytes of ``spec``: noise strength bisected on a sample to hit the target size."""
    rng = random.Random(spec.seed)
    skin = _skin(spec.width, spec.height, rng)
    # Calibrate bytes per pixel on a crop of ~1/16 of the area (JPEG size scales with area).
    sample_w, sample_h = max(256, spec.width // 4), max(256, spec.height // 4)
    sample = skin.crop((0, 0, sample_w, sample_h))
    scale = (spec.width * spec.height) / (sample_w * sample_h)

    def estimate(sigma: int) -> float:
        return len(_encode(_compose(sample, sigma, random.Random(spec.seed)), quality, None)) * scale

    lo, hi = 1, 64
    while lo < hi:  # the smallest sigma whose estimate reaches the target
        sigma = (lo + hi) // 2
        if estimate(sigma) < spec.target_bytes:
            lo = sigma + 1
        else:
            hi = sigma
    sigma = lo
    if sigma > 1 and abs(estimate(sigma - 1) - spec.target_bytes) < abs(estimate(sigma) - spec.target_bytes):
        sigma -= 1
    return _encode(_compose(skin, sigma, rng), quality, _exif(spec, rng))


# the cache --------------------------------------------------------------------------------
def _fingerprint(specs: list[ImageSpec]) -> str:
    raw = json.dumps([GENERATOR_VERSION, [s.__dict__ for s in specs]], sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def ensure_images(specs: list[ImageSpec] | None = None, cache_dir: Path = DEFAULT_CACHE,
                  *, progress: bool = True) -> list[BenchImage]:
    """The images of ``specs``, generated into ``cache_dir`` unless already there."""
    specs = default_specs() if specs is None else specs
    directory = Path(cache_dir) / _fingerprint(specs)
    manifest_path = directory / "manifest.json"
    if manifest_path.exists():
        entries = json.loads(manifest_path.read_text())
        images = [BenchImage(**{**e, "path": directory / e["path"]}) for e in entries]
        if all(i.path.exists() and i.path.stat().st_size == i.size for i in images):
            return images
    directory.mkdir(parents=True, exist_ok=True)
    images = []
    for n, spec in enumerate(specs, 1):
        data = generate(spec)
        path = directory / f"{spec.name}.jpg"
        path.write_bytes(data)
        images.append(BenchImage(spec.name, spec.kind, path, len(data), hashlib.sha256(data).hexdigest(),
                                 spec.width, spec.height))
        if progress:
            print(f"  image {n}/{len(specs)}: {spec.name} {spec.width}x{spec.height} "
                  f"{len(data) / 1e6:.2f} MB", file=sys.stderr, flush=True)
    manifest = [{**i.__dict__, "path": i.path.name} for i in images]
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return images


def main() -> int:
    parser = argparse.ArgumentParser(description="generate the benchmark images into the cache")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE))
    parser.add_argument("--total-body", type=int, default=24)
    parser.add_argument("--dermoscopy", type=int, default=8)
    args = parser.parse_args()
    images = ensure_images(default_specs(args.total_body, args.dermoscopy), Path(args.cache))
    total = sum(i.size for i in images)
    print(f"{len(images)} images, {total / 1e6:.0f} MB in {Path(args.cache)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
