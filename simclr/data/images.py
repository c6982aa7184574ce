"""Finding image files in a folder tree and decoding them to fixed-size uint8 RGB arrays."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger("simclr")

# PIL raises DecompressionBombError (not an OSError) for images over its pixel limit, and SyntaxError for a PNG
# with a broken chunk.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
MAX_ASPECT_RATIO = 50  # longer side / shorter side: beyond it an "image" is a strip, refused as unreadable

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class NoImagesError(ValueError):
    """A folder holds no image files."""


def find_images(root: Path, unreadable: list[tuple[Path, str]] | None = None) -> list[Path]:
    """All image files below `root`, recursively, in sorted order.

    Symlinked folders are followed once: a link back to a folder already visited is skipped, so a symlink
    cycle cannot loop forever. A subfolder that cannot be listed is appended to `unreadable` as (folder, reason),
    else logged. Raises NoImagesError naming the folder when nothing is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise NoImagesError(f"{root}: not a folder")
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()
    skipped = 0

    def cannot_list(error: OSError) -> None:
        reason = f"{type(error).__name__}: {error.strerror or error}"
        if unreadable is None:
            log.warning("skipping unreadable folder %s: %s", error.filename, reason)
        else:
            unreadable.append((Path(error.filename), reason))

    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=cannot_list):
        identity = os.stat(folder)
        if (identity.st_dev, identity.st_ino) in visited:
            subfolders.clear()
            continue
        visited.add((identity.st_dev, identity.st_ino))
        subfolders.sort()
        for name in files:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(folder) / name)
            else:
                skipped += 1
    if not found:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise NoImagesError(f"{root}: no image files found ({skipped} other files; looked for {kinds})")
    return sorted(found)


def class_of(path: Path, root: Path) -> str | None:
    """The class of an image in an ImageFolder tree: the first folder below `root` (None directly in `root`)."""
    parts = Path(path).relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def load_image(path: Path, size: int) -> np.ndarray:
    """Decode `path` to uint8 RGB [size, size, 3]: shorter side resized to `size`, then centre-cropped.

    EXIF orientation is applied and every mode (L, LA, P with transparency, CMYK, I;16, ...) becomes RGB;
    transparent pixels are composited on white. Raises OSError or ValueError (from PIL) for unreadable files.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device named *.jpg would block or never end
        raise OSError(f"{path}: not a regular file")
    with Image.open(path) as image:
        refuse_strips(*image.size)  # before any pixel is decoded
        if image.format == "JPEG":
            image.draft("RGB", (size, size))  # decode at a reduced scale when the file is much larger
        image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
        return np.array(resize_center_crop(image, size))  # a writable copy


def try_load_image(path: Path, size: int) -> np.ndarray | None:
    """`load_image`, or None with one warning naming the file when it cannot be decoded."""
    try:
        return load_image(path, size)
    except DECODE_ERRORS as error:
        log.warning("skipping unreadable image %s: %s", path, error)
        return None


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
