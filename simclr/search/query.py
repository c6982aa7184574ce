"""Searching embedded images: open (or build) the index beside feats.npy, embed queries with the same model, rank."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from simclr.embed.encoder import Encoder, EncoderSpec, same_model
from simclr.embed.features import Features, load_features
from simclr.embed.reader import embedded_batches, scan_inputs
from simclr.search.index import (
    EXACT_UP_TO,
    StaleIndexError,
    build_index,
    index_path,
    load_index,
    save_index,
    search,
)

log = logging.getLogger("simclr")


class ModelMismatchError(ValueError):
    """The query model is not the model the index was built with."""


@dataclass(frozen=True)
class Neighbour:
    rank: int
    score: float
    path: str
    row: int


@dataclass(frozen=True)
class QueryResult:
    query: str
    neighbours: list[Neighbour]
    error: str | None = None  # the query image could not be decoded


def open_index(features_path: Path, kind: str = "flat") -> tuple[Features, object]:
    """The features and their FAISS index. When there is none yet, one of `kind` is built and saved (`simclr index`
    builds "auto"); when it is stale or damaged, an exact one replaces it (with a warning) for up to EXACT_UP_TO
    rows, and a larger collection's is refused with the command that rebuilds it."""
    features = load_features(features_path)
    try:
        index = load_index(features_path)
        if (index.ntotal, index.d) != features.vectors.shape:
            raise StaleIndexError(f"{index_path(features_path)} holds {index.ntotal} vectors of {index.d} dims, "
                                  f"{features_path} {features.vectors.shape[0]} of {features.vectors.shape[1]}")
        return features, index
    except FileNotFoundError:
        pass
    except StaleIndexError as stale:
        if len(features.vectors) > EXACT_UP_TO:
            raise StaleIndexError(f"{stale}: rebuild it with `simclr index {features_path}`") from None
        log.warning("%s; rebuilding it (exact)", stale)
        kind = "flat"
    index, report = build_index(features.vectors, kind=kind)
    path = save_index(index, features_path, report)
    log.info("built a %s index of %d vectors: %s", report.kind, report.vectors, path)
    return features, index


def query_encoder(features: Features, spec: EncoderSpec) -> Encoder:
    """The encoder for queries against `features`: `spec`'s, or else the model the features record (when that file
    is still there); ModelMismatchError unless it is the model that embedded them."""
    recorded = features.header.model_source
    if not (spec.model or spec.server) and recorded and Path(recorded).is_file():
        spec = dataclasses.replace(spec, model=recorded)
    encoder = spec.open()
    check_model(features, encoder)
    return encoder


def check_model(features: Features, encoder: Encoder) -> None:
    """Refuse to search with a model other than the one that embedded the index."""
    if not same_model(features.model, encoder.identity):
        recorded = features.model
        raise ModelMismatchError(
            f"{features.path} was embedded with model {recorded.name} v{recorded.version} "
            f"(sha256 {recorded.sha256[:12]}), but the query model is {encoder.identity.name} "
            f"v{encoder.identity.version} (sha256 {encoder.identity.sha256[:12]}); pass the index's model "
            f"with --model {features.header.model_source or 'PATH'}")


def search_images(queries: Sequence[Path], features: Features, index, encoder: Encoder, k: int = 10
                  ) -> list[QueryResult]:
    """Embed the query images (files or folders) with `encoder` and return each one's k nearest rows."""
    check_model(features, encoder)
    entries = scan_inputs(queries)
    (batch,) = embedded_batches(entries, encoder, batch_size=max(1, len(entries)), workers=0)
    embeddings, errors = batch.embeddings, batch.errors
    results: list[QueryResult] = []
    if len(embeddings):
        scores, rows = search(index, embeddings, k)
    decoded = iter(range(len(embeddings)))
    for entry, error in zip(entries, errors, strict=True):
        if error:
            results.append(QueryResult(entry.path, [], error))
            continue
        i = next(decoded)
        neighbours = [Neighbour(rank + 1, float(score), features.paths[row], int(row))
                      for rank, (score, row) in enumerate(zip(scores[i], rows[i], strict=True)) if row >= 0]
        results.append(QueryResult(entry.path, neighbours))
    return results
