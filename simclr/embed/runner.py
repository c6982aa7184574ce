"""Folder -> embeddings: reader (decode in workers) -> encoder -> writer, joined with a progress bar."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from simclr.embed.encoder import Encoder
from simclr.embed.features import unit_rows
from simclr.embed.reader import embedded_batches, scan_inputs
from simclr.embed.shards import shard_path
from simclr.embed.sidecar import FeaturesHeader, Shard, listing_sha256
from simclr.embed.writer import FeatureWriter
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

    Decoding runs in `workers` processes, ahead of the encoder (or on the server, for an encoder that takes the
    files); rows stream to disk, so memory stays bounded.
    With `normalize` each row is L2-normalised. `resume` continues an interrupted run of the same command.
    `shard` (K, N): embed only images K, K + N, K + 2N, ... of the list, into feats-K-of-N.npy (simclr merge joins
    the N parts).
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be at least 1")
    entries = scan_inputs(inputs)
    part = None
    if shard is not None:
        index, count = shard
        part = Shard(index, count, len(entries), listing_sha256(entry.path for entry in entries))
        entries, out = entries[index::count], shard_path(out, index, count)
    header = FeaturesHeader(model=encoder.identity, model_source=encoder.source, inputs=tuple(str(p) for p in inputs),
                            cwd=os.getcwd(), normalized=normalize, images=len(entries),
                            listing_sha256=listing_sha256(entry.path for entry in entries), shard=part)
    started = time.perf_counter()
    failures: list[tuple[str, str]] = []
    with FeatureWriter(out, encoder.identity.embedding_dim, header, resume) as writer:
        remaining = entries[writer.done:]
        with progress_bar(total=len(entries), initial=writer.done, unit="img", desc="embedding",
                          disable=not progress) as bar:
            for batch in embedded_batches(remaining, encoder, batch_size, workers):
                embeddings = batch.embeddings
                if normalize and len(embeddings):
                    embeddings = unit_rows(embeddings)
                writer.write([e.path for e in batch.entries], [e.label for e in batch.entries], embeddings,
                             batch.errors)
                failures += [(e.path, error) for e, error in zip(batch.entries, batch.errors, strict=True) if error]
                bar.update(len(batch.entries))
        writer.finish()
    seconds = time.perf_counter() - started
    return EmbedResult(features=writer.out, sidecar=writer.sidecar, rows=writer.rows, failed=writer.failed,
                       failures=failures, seconds=seconds, images_per_second=len(remaining) / max(seconds, 1e-9))
