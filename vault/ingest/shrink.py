"""The last, small shrink of a JPEG decoded at reduced resolution, by OpenCV.

This is the only module that imports OpenCV (and numpy); it works on arrays, and Pillow stays
in ``vault.ingest.renditions``, which hands it an image (any object with the array interface)
and takes back the array's buffer. It is imported by decoder processes alone (renditions loads
it on first use, the decoder's initializer before its memory cap is counted), never by the
daemon: OpenCV costs ~30 MB of memory and ~0.1 s to import, for one resize.

Why OpenCV for this one step: a 24-megapixel JPEG (6000 x 4000) scaled by its DCT comes out at
1500 x 1000, and the preview needs a shrink by 0.853 from there. Pillow's triangle filter,
whose support widens with the factor and which is not vectorised, takes ~16 ms of the ~150 ms a
photograph costs; a small Gaussian (the anti-aliasing, sigma 0.45 source pixels) followed by
OpenCV's two-tap bilinear interpolation takes ~5 ms. Closeness to a full decode shrunk with
Lanczos, in dB PSNR (tests/ingest/test_renditions.py pins "within 0.5 dB of Pillow"):

    factor 0.853, RGB                 Pillow triangle   Gaussian + bilinear   bilinear alone
    bench/renditions.py's photograph  47.9              47.6                  47.5
    a noisier photograph              42.6              42.3                  42.0
    one- and two-pixel lines (hairs)  28.8              28.7                  27.2

Sigma was chosen between 0.35 (lines 1.2 dB worse) and 0.5 (photographs 0.7 dB worse in grey
and CMYK). Below a factor of ~0.75 one small Gaussian no longer does (at 0.64: 1 to 4 dB worse
than Pillow), nor after a DCT scaling of only 1/2, whose IDCT keeps more high frequencies (0.6 to
0.8 dB worse), so the caller keeps Pillow's filter there (``vault.ingest.renditions._fit``).
"""

from __future__ import annotations

import cv2
import numpy as np

# One thread: a decoder process is one job's worth of CPU, below uploads in priority; a pool of
# OpenCV threads would also take address space under the decoder's memory cap.
cv2.setNumThreads(1)

SIGMA = 0.45  # the anti-aliasing Gaussian, in source pixels


def band_limited(pixels: object, size: tuple[int, int]) -> np.ndarray:
    """``pixels`` (height x width, by 1, 3 or 4 channels of 8 bits: a Pillow image of mode L,
    RGB or CMYK from a DCT-scaled decode) shrunk to ``size`` (width, height) by a factor close
    to 1, as a C-contiguous array of the same channels."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"expected 8-bit pixels, got {array.dtype} of {array.ndim} dimensions")
    # At this sigma the taps beyond +-1 weigh < 1e-4: three taps give the same 8-bit result as
    # the five OpenCV would choose, for two thirds of the work.
    smoothed = cv2.GaussianBlur(array, (3, 3), SIGMA)
    return np.ascontiguousarray(cv2.resize(smoothed, size, interpolation=cv2.INTER_LINEAR))
