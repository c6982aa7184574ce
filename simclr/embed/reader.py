"""Reading the images to embed: scan the inputs, decode in worker processes (or hand the files to an encoder that
takes them), yield batches in order."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

import numpy as np

from simclr.data.decoding import decode_chunks
from simclr.data.images import class_of, walk_images
from simclr.embed.encoder import Encoder, takes_files

T = TypeVar("T")


@dataclass(frozen=True)
class ImageEntry:
    """One image to embed: its path as recorded (the argument joined with the path below it) and, inside a
    folder argument, its class (the first folder below the argument), or None."""

    path: str
    label: str | None
    error: str | None = None  # known before decoding (a folder that cannot be listed)


@dataclass(frozen=True)
class DecodedBatch:
    entries: list[ImageEntry]  # in input order, decoded or not
    images: np.ndarray  # uint8 [n_ok, S, S, 3], the decoded entries in order
    errors: list[str | None]  # per entry: why it failed, or None (decoded)


def iter_inputs(inputs: Sequence[Path]) -> Iterator[ImageEntry]:
    """Image files named directly, and the image files below each folder (recursive, sorted), streamed: any
    number of files, in bounded memory. A missing input is refused at once; a folder without images raises
    NoImagesError when the walk reaches its end."""
    for given in inputs:
        if not Path(given).exists():
            raise FileNotFoundError(f"{given}: no such file or folder")
    return _walk_inputs(inputs)


def _walk_inputs(inputs: Sequence[Path]) -> Iterator[ImageEntry]:
    for given in map(Path, inputs):
        if not given.is_dir():
            yield ImageEntry(str(given), None)  # the decoder refuses what is not a regular file
            continue
        # an unlistable folder (or a link out of the folder) is recorded under its class (it is one, or is inside
        # one), so probes see it too
        for path, reason in walk_images(given):
            folder = reason is not None and path.is_dir()
            yield ImageEntry(str(path), class_of(path / "_" if folder else path, given), reason)


def scan_inputs(inputs: Sequence[Path]) -> list[ImageEntry]:
    """`iter_inputs` as a list, for the few files of a query."""
    return list(iter_inputs(inputs))


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` consecutive items (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def decoded_batches(entries: Iterable[ImageEntry], size: int, batch_size: int, workers: int | None = None,
                    prefetch: int = 2) -> Iterator[DecodedBatch]:
    """Batches of decoded images in input order. Decoding runs in `workers` processes (0: in this process),
    at most `prefetch` batches per worker ahead of the consumer, so memory stays bounded for any number of files."""
    submitted: deque[list[ImageEntry]] = deque()

    def paths() -> Iterator[list[str]]:
        for chunk in chunked(entries, batch_size):
            submitted.append(chunk)
            yield [entry.path for entry in chunk if entry.error is None]

    for images, errors in decode_chunks(paths(), size, workers, prefetch):
        chunk = submitted.popleft()
        decoded = iter(errors)
        yield DecodedBatch(chunk, images, [entry.error or next(decoded) for entry in chunk])


@dataclass(frozen=True)
class EmbeddedBatch:
    entries: list[ImageEntry]  # in input order, embedded or not
    embeddings: np.ndarray  # float32 [n_ok, D], the embedded entries in order
    errors: list[str | None]  # per entry: why it failed, or None (embedded)


def embedded_batches(entries: Iterable[ImageEntry], encoder: Encoder, batch_size: int, workers: int | None = None
                     ) -> Iterator[EmbeddedBatch]:
    """Embeddings of `entries`, `batch_size` at a time, in order. Files go to the encoder as they are when it takes
    them (Triton's bytes path); otherwise they are decoded here, in `workers` processes ahead of the encoder."""
    if takes_files(encoder):
        for chunk in chunked(entries, batch_size):
            embeddings, errors = encoder.embed_files([entry.path for entry in chunk if entry.error is None])
            outcome = iter(errors)
            yield EmbeddedBatch(chunk, embeddings[[error is None for error in errors]],
                                [entry.error or next(outcome) for entry in chunk])
        return
    for batch in decoded_batches(entries, encoder.identity.image_size, batch_size, workers):
        embeddings = encoder.embed(batch.images) if len(batch.images) else \
            np.zeros((0, encoder.identity.embedding_dim), np.float32)
        yield EmbeddedBatch(batch.entries, embeddings, batch.errors)
