"""Finding image files in a folder tree and decoding them to fixed-size uint8 RGB arrays."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from simclr.data.decode import DECODE_ERRORS, decode_image

log = logging.getLogger("simclr")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class NoImagesError(ValueError):
    """A folder holds no image files."""


def find_images(root: Path) -> list[Path]:
    """All image files below `root`, recursively, in sorted order (`walk_images` as a list; a subfolder that cannot
    be listed, or a link out of `root`, is logged). Raises NoImagesError naming the folder when nothing is found."""
    found: list[Path] = []
    for path, reason in walk_images(root):
        if reason is None:
            found.append(path)
        else:
            log.warning("skipping %s: %s", path, reason)
    return found


def walk_images(root: Path) -> Iterator[tuple[Path, str | None]]:
    """The image files below `root` as (path, None), in sorted order (the order of sorting the whole list of
    paths), streamed: only one folder's names are held at a time, so any number of files can be walked. A
    subfolder that cannot be listed comes in its place as (folder, reason).

    Symbolic links are followed inside `root` only: a link (to a file or a folder) that leads out of it comes as
    (link, reason) and is not followed, so that a link planted in a shared folder cannot pull another tree into the
    collection; a link back to a folder already visited is skipped, so a symlink cycle cannot loop forever. Raises
    NoImagesError naming `root` when it is no folder, or at the end of the walk when it holds no image file.
    """
    root = Path(root)
    if not root.is_dir():
        raise NoImagesError(f"{root}: not a folder")
    inside = os.path.realpath(root).rstrip(os.sep) + os.sep
    visited: set[tuple[int, int]] = set()
    counts = {"images": 0, "other": 0}

    def walk(folder: Path) -> Iterator[tuple[Path, str | None]]:
        try:
            identity = os.stat(folder)
            if (identity.st_dev, identity.st_ino) in visited:
                return
            visited.add((identity.st_dev, identity.st_ino))
            with os.scandir(folder) as listing:
                names = sorted(_entry(entry) for entry in listing)
        except OSError as error:
            yield folder, _reason(error)
            return
        for name, is_folder, is_link, problem in names:
            is_image = not is_folder and Path(name).suffix.lower() in IMAGE_EXTENSIONS
            if problem is not None:  # a link that loops: that entry fails (an image, or maybe a folder), not its folder
                if is_image or not Path(name).suffix:
                    yield folder / name, problem
                continue
            if is_link and (is_folder or is_image):
                target = os.path.realpath(folder / name)
                if not (target + os.sep).startswith(inside):
                    yield folder / name, f"a symbolic link out of {root} (to {target}): not followed"
                    continue
            if is_folder:
                yield from walk(folder / name)
            elif is_image:
                counts["images"] += 1
                yield folder / name, None
            else:
                counts["other"] += 1

    yield from walk(root)
    if not counts["images"]:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise NoImagesError(f"{root}: no image files found ({counts['other']} other files; looked for {kinds})")


def _entry(entry: os.DirEntry) -> tuple[str, bool, bool, str | None]:
    """(name, is a folder, is a link, why it cannot be told apart, or None) of one listed entry."""
    try:
        return entry.name, entry.is_dir(), entry.is_symlink(), None
    except OSError as error:  # ELOOP: a link to itself
        return entry.name, False, True, _reason(error)


def _reason(error: OSError) -> str:
    return f"{type(error).__name__}: {error.strerror or error}"


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
