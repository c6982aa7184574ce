"""Finding image files in a folder tree and decoding them to fixed-size uint8 RGB arrays."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger("simclr")

# PIL raises DecompressionBombError (not an OSError) for images over its pixel limit.
DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class NoImagesError(ValueError):
    """A folder holds no image files."""


def find_images(root: Path) -> list[Path]:
    """All image files below `root`, recursively, in sorted order.

    Symlinked folders are followed once: a link back to a folder already visited is skipped, so a symlink
    cycle cannot loop forever. Raises NoImagesError naming the folder when nothing is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise NoImagesError(f"{root}: not a folder")
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()
    skipped = 0
    for folder, subfolders, files in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in visited:
            subfolders.clear()
            continue
        visited.add((stat.st_dev, stat.st_ino))
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
    with Image.open(path) as image:
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
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clipping everything above 255 to white.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size and array.max() > 255 else 255.0
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info or image.mode in ("LA", "PA", "RGBA", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (antialiased) and crop the centre square."""
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, Image.BILINEAR, reducing_gap=3.0)
    left = (new_size[0] - size) // 2
    top = (new_size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))
