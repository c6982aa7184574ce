"""Encoded image bytes -> the model's uint8 RGB input: the one decode that simclr-embed, the search and Triton's
preprocessing model all run.

`simclr export` copies this file into the repository's NAME_preprocess model, where Triton's python backend runs it
without simclr installed: it imports only the standard library, numpy and Pillow.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

# Whatever decoding one file raises is that file's error: besides OSError, PIL raises DecompressionBombError for
# images over its pixel limit and SyntaxError for a PNG with a broken chunk, and its plugins raise what they like
# (NotImplementedError for a DDS pixel format it lacks, struct.error, IndexError, ...).
DECODE_ERRORS = (Exception,)
# Pixels one query may decode (the search service, Triton's NAME_preprocess): a 24 MP camera's photo. PIL's own
# limit (179 M) lets one PNG of a few hundred KB take ~4 GB and ~25 s to decode.
MAX_QUERY_PIXELS = 25_000_000
MAX_ASPECT_RATIO = 50  # longer side / shorter side: beyond it an "image" is a strip, refused as unreadable


def decode_image(file: BinaryIO, size: int, max_pixels: int | None = None) -> np.ndarray:
    """Decode an open image file (or io.BytesIO) to uint8 RGB [size, size, 3]: shorter side resized to `size`,
    then centre-cropped.

    EXIF orientation is applied and every mode (L, LA, P with transparency, CMYK, I;16, ...) becomes RGB;
    transparent pixels are composited on white; PIL's decompression-bomb limit holds, and `max_pixels` (when
    given) is a lower one, checked before any pixel is decoded (a JPEG counts at the reduced scale it is decoded
    at). Raises one of DECODE_ERRORS for what cannot be decoded.
    """
    with Image.open(file) as image:
        refuse_strips(*image.size)  # before any pixel is decoded
        if image.format == "JPEG":
            image.draft("RGB", (size, size))  # decode at a reduced scale when the file is much larger
        refuse_over(image.size, max_pixels)
        image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
        return np.array(resize_center_crop(image, size))  # a writable copy


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB, compositing transparency on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit, 32-bit and float greyscale: scale the mode's range to 8 bits (never the image's own maximum,
        # which would stretch a dark image to white).
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array * (255.0 / _full_scale(image.mode, array)), 0, 255).round()
                                .astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info or image.mode in ("LA", "PA", "RGBA", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _full_scale(mode: str, array: np.ndarray) -> float:
    """The value that means white: 65535 for 16-bit modes; for 32-bit integers the smallest of 255, 65535 (16-bit
    PNGs open as "I") and 2^31 - 1 that holds the data; for floats 1.0 when the data lie in [0, 1], else 255."""
    peak = float(array.max()) if array.size else 0.0
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "F":
        return 1.0 if peak <= 1.0 else 255.0
    return next(scale for scale in (255.0, 65535.0, 2.0**31 - 1) if peak <= scale)


def refuse_over(size: tuple[int, int], max_pixels: int | None) -> None:
    """ValueError for an image of more than `max_pixels` pixels (None: no limit beyond PIL's)."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f"{width}x{height} pixels ({width * height / 1e6:.1f} Mpx): over the limit of "
                         f"{max_pixels / 1e6:g} Mpx")


def refuse_strips(width: int, height: int) -> None:
    """ValueError for an empty image or one whose sides differ more than MAX_ASPECT_RATIO times."""
    if min(width, height) == 0 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ValueError(f"{width}x{height} pixels: aspect ratio beyond {MAX_ASPECT_RATIO}:1")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (antialiased) and crop the centre square. ValueError for strips beyond
    MAX_ASPECT_RATIO (checked before any pixel is decoded), which bounds the resized image to size x 50 size."""
    width, height = image.size
    refuse_strips(width, height)
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, Image.BILINEAR, reducing_gap=3.0)
    left = (new_size[0] - size) // 2
    top = (new_size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))
