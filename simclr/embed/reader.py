"""Reading the images to embed: scan the inputs, decode in worker processes, yield uint8 batches in order."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr.data.images import DECODE_ERRORS, find_images, load_image


@dataclass(frozen=True)
class ImageEntry:
    """One image to embed: its path as recorded (the argument joined with the path below it) and, inside a
    folder argument, its class (the first folder below the argument), or None."""

    path: str
    label: str | None


@dataclass(frozen=True)
class DecodedBatch:
    entries: list[ImageEntry]  # in input order, decoded or not
    images: np.ndarray  # uint8 [n_ok, S, S, 3], the decoded entries in order
    errors: list[str | None]  # per entry: why it failed, or None (decoded)


def scan_inputs(inputs: Sequence[Path]) -> list[ImageEntry]:
    """Image files named directly, and the image files below each folder (recursive, sorted)."""
    entries: list[ImageEntry] = []
    for given in inputs:
        given = Path(given)
        if given.is_dir():
            for path in find_images(given):
                relative = path.relative_to(given)
                label = relative.parts[0] if len(relative.parts) > 1 else None
                entries.append(ImageEntry(str(given / relative), label))
        elif given.is_file():
            entries.append(ImageEntry(str(given), None))
        else:
            raise FileNotFoundError(f"{given}: no such file or folder")
    return entries


def decode_many(paths: list[str], size: int) -> tuple[np.ndarray, list[str | None]]:
    """Decode files to uint8 [n_ok, size, size, 3]; per path the failure reason or None (runs in a worker)."""
    images, errors = [], []
    for path in paths:
        try:
            images.append(load_image(Path(path), size))
            errors.append(None)
        except DECODE_ERRORS as error:
            errors.append(f"{type(error).__name__}: {str(error).strip() or 'unreadable'}")
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, errors


def decoded_batches(entries: list[ImageEntry], size: int, batch_size: int, workers: int | None = None,
                    prefetch: int = 2) -> Iterator[DecodedBatch]:
    """Batches of decoded images in input order. Decoding runs in `workers` processes (0: in this process),
    at most `prefetch` batches per worker ahead of the consumer, so memory stays bounded for any number of files."""
    chunks = [entries[start:start + batch_size] for start in range(0, len(entries), batch_size)]
    workers = os.cpu_count() or 1 if workers is None else workers
    if workers == 0:
        for chunk in chunks:
            yield _batch(chunk, *decode_many([e.path for e in chunk], size))
        return
    with ProcessPoolExecutor(workers) as pool:
        pending: deque[tuple[list[ImageEntry], Future]] = deque()
        next_chunk = 0
        while pending or next_chunk < len(chunks):
            while next_chunk < len(chunks) and len(pending) < workers * prefetch:
                chunk = chunks[next_chunk]
                pending.append((chunk, pool.submit(decode_many, [e.path for e in chunk], size)))
                next_chunk += 1
            chunk, future = pending.popleft()
            yield _batch(chunk, *future.result())


def _batch(chunk: list[ImageEntry], images: np.ndarray, errors: list[str | None]) -> DecodedBatch:
    return DecodedBatch(chunk, images, errors)
