"""Folder -> embeddings: reader (decode in workers) -> encoder -> writer, joined with a progress bar."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from simclr.embed.encoder import Encoder
from simclr.embed.features import unit_rows
from simclr.embed.reader import ImageEntry, embedded_batches, iter_inputs
from simclr.embed.shards import shard_path
from simclr.embed.sidecar import FeaturesHeader, ListingDigest, Shard, file_record
from simclr.embed.writer import FeatureWriter, features_out
from simclr.progress import progress_bar


@dataclass(frozen=True)
class EmbedResult:
    features: Path
    sidecar: Path
    rows: int
    failed: int
    failures: list[tuple[str, str]]  # (path, reason), this run's
    seconds: float
    images_per_second: float


def embed_images(inputs: Sequence[Path], out: Path, encoder: Encoder, batch_size: int = 256,
                 workers: int | None = None, normalize: bool = False, resume: bool = False,
                 progress: bool = True, shard: tuple[int, int] | None = None) -> EmbedResult:
    """Embed every image named or found below `inputs` into `out` (feats.npy) and its sidecar (feats.jsonl).

    The inputs are walked twice, streamed (once to count and checksum the list, once to embed it, checked against
    the first); decoding runs in `workers` processes, ahead of the encoder (or on the server, for an encoder that
    takes the files); rows stream to disk: memory stays bounded whatever the number of files.
    With `normalize` each row is L2-normalised. `resume` continues an interrupted run of the same command.
    `shard` (K, N): embed only images K, K + N, K + 2N, ... of the list, into feats-K-of-N.npy (simclr merge joins
    the N parts).
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be at least 1")
    index, count = shard or (0, 1)
    features_out(out)
    listing = iter_inputs(inputs)
    whole, own = ListingDigest(), ListingDigest()
    with progress_bar(unit="file", desc="listing", disable=not progress) as bar:
        for position, entry in enumerate(listing):  # first pass: count and checksum, nothing kept
            whole.add(entry.path)
            if position % count == index:
                own.add(entry.path)
            bar.update()
    part = None
    if shard is not None:
        part = Shard(index, count, whole.count, whole.sha256)
        out = shard_path(out, index, count)
    header = FeaturesHeader(model=encoder.identity, model_source=encoder.source, inputs=tuple(str(p) for p in inputs),
                            cwd=os.getcwd(), normalized=normalize, images=own.count, listing_sha256=own.sha256,
                            shard=part)
    started = time.perf_counter()
    failures: list[tuple[str, str]] = []
    relisted = ListingDigest()

    def own_entries() -> Iterator[ImageEntry]:  # second pass, checked against the first as it goes
        for position, entry in enumerate(iter_inputs(inputs)):
            relisted.add(entry.path)
            if position % count == index:
                yield entry

    with FeatureWriter(out, encoder.identity.embedding_dim, header, resume) as writer:
        done_before = writer.done
        remaining = islice(own_entries(), writer.done, None)
        with progress_bar(total=own.count, initial=writer.done, unit="img", desc="embedding",
                          disable=not progress) as bar:
            for batch in embedded_batches(remaining, encoder, batch_size, workers):
                embeddings = batch.embeddings
                if normalize and len(embeddings):
                    embeddings = unit_rows(embeddings)
                writer.write([e.path for e in batch.entries], [e.label for e in batch.entries], embeddings,
                             batch.errors, [file_record(e.path) if error is None else None
                                            for e, error in zip(batch.entries, batch.errors, strict=True)])
                failures += [(e.path, error) for e, error in zip(batch.entries, batch.errors, strict=True) if error]
                bar.update(len(batch.entries))
        if relisted.sha256 != whole.sha256:
            raise ValueError(f"{', '.join(map(str, inputs))}: the image files changed while they were embedded "
                             f"({whole.count} when listed, {relisted.count} at the end); run again without --resume")
        writer.finish()
    seconds = time.perf_counter() - started
    embedded = writer.done - done_before
    return EmbedResult(features=writer.out, sidecar=writer.sidecar, rows=writer.rows, failed=writer.failed,
                       failures=failures, seconds=seconds, images_per_second=embedded / max(seconds, 1e-9))
