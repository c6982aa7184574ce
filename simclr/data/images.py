"""Finding image files in a folder tree and decoding them to fixed-size uint8 RGB arrays."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np

from simclr.data.decode import DECODE_ERRORS, decode_image

log = logging.getLogger("simclr")

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
    """Decode the file at `path` as `decode_image` does: uint8 RGB [size, size, 3]. Raises one of DECODE_ERRORS
    for unreadable files, and OSError for what is not a regular file."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device named *.jpg would block or never end
        raise OSError(f"{path}: not a regular file")
    with open(path, "rb") as file:
        return decode_image(file, size)


def try_load_image(path: Path, size: int) -> np.ndarray | None:
    """`load_image`, or None with one warning naming the file when it cannot be decoded."""
    try:
        return load_image(path, size)
    except DECODE_ERRORS as error:
        log.warning("skipping unreadable image %s: %s", path, error)
        return None
