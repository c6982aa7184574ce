"""Reading the images to embed: scan the inputs, decode in worker processes (or hand the files to an encoder that
takes them), yield batches in order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr.data.decoding import decode_chunks
from simclr.data.images import class_of, find_images
from simclr.embed.encoder import Encoder, takes_files


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


def scan_inputs(inputs: Sequence[Path]) -> list[ImageEntry]:
    """Image files named directly, and the image files below each folder (recursive, sorted)."""
    entries: list[ImageEntry] = []
    for given in inputs:
        given = Path(given)
        if given.is_dir():
            unreadable: list[tuple[Path, str]] = []
            for path in find_images(given, unreadable):
                entries.append(ImageEntry(str(given / path.relative_to(given)), class_of(path, given)))
            # an unlistable folder is recorded under its class (it is one, or is inside one), so probes see it too
            entries += [ImageEntry(str(folder), class_of(folder / "_", given), reason) for folder, reason in unreadable]
        elif given.exists():
            entries.append(ImageEntry(str(given), None))  # the decoder refuses what is not a regular file
        else:
            raise FileNotFoundError(f"{given}: no such file or folder")
    return entries


def decoded_batches(entries: list[ImageEntry], size: int, batch_size: int, workers: int | None = None,
                    prefetch: int = 2) -> Iterator[DecodedBatch]:
    """Batches of decoded images in input order. Decoding runs in `workers` processes (0: in this process),
    at most `prefetch` batches per worker ahead of the consumer, so memory stays bounded for any number of files."""
    chunks = [entries[start:start + batch_size] for start in range(0, len(entries), batch_size)]
    paths = [[entry.path for entry in chunk if entry.error is None] for chunk in chunks]
    for chunk, (images, errors) in zip(chunks, decode_chunks(paths, size, workers, prefetch), strict=True):
        decoded = iter(errors)
        yield DecodedBatch(chunk, images, [entry.error or next(decoded) for entry in chunk])


@dataclass(frozen=True)
class EmbeddedBatch:
    entries: list[ImageEntry]  # in input order, embedded or not
    embeddings: np.ndarray  # float32 [n_ok, D], the embedded entries in order
    errors: list[str | None]  # per entry: why it failed, or None (embedded)


def embedded_batches(entries: list[ImageEntry], encoder: Encoder, batch_size: int, workers: int | None = None
                     ) -> Iterator[EmbeddedBatch]:
    """Embeddings of `entries`, `batch_size` at a time, in order. Files go to the encoder as they are when it takes
    them (Triton's bytes path); otherwise they are decoded here, in `workers` processes ahead of the encoder."""
    if takes_files(encoder):
        for start in range(0, len(entries), batch_size):
            chunk = entries[start:start + batch_size]
            embeddings, errors = encoder.embed_files([entry.path for entry in chunk if entry.error is None])
            outcome = iter(errors)
            yield EmbeddedBatch(chunk, embeddings, [entry.error or next(outcome) for entry in chunk])
        return
    for batch in decoded_batches(entries, encoder.identity.image_size, batch_size, workers):
        embeddings = encoder.embed(batch.images) if len(batch.images) else \
            np.zeros((0, encoder.identity.embedding_dim), np.float32)
        yield EmbeddedBatch(batch.entries, embeddings, batch.errors)
