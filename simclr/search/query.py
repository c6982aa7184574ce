"""Searching embedded images: open (or build) the index beside feats.npy, embed queries with the same model, rank."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from simclr.embed.encoder import Encoder, EncoderSpec, same_model
from simclr.embed.features import Features, load_parts
from simclr.embed.reader import embedded_batches, scan_inputs
from simclr.search.index import EXACT_UP_TO, build_index, search
from simclr.search.indexing import default_index_file, leave_out, removals_of
from simclr.search.store import StaleIndexError, index_path, load_index, read_manifest, save_index
from simclr.search.vectors import vector_source

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


def open_index(path: Path, kind: str = "flat", mmap: bool = True) -> tuple[Features, object]:
    """The features of a collection and their FAISS index (memory-mapped unless `mmap` is False). `path` is a
    features file (its index beside it: feats.faiss) or an index (.faiss: its manifest names the features files, its
    parts). When a features file has no index yet, one of `kind` is built and saved (`simclr index` builds
    "auto"); when it is stale or damaged, an exact one is built in memory (with a warning; nothing is written, so a
    reader never undoes a writer's work) for up to EXACT_UP_TO rows, and a larger collection's is refused with the
    command that rebuilds it. The features' `removed` holds the rows
    taken out of the index."""
    path = Path(path)
    if path.suffix == ".faiss":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such index (simclr index FEATURES... --out {path} builds one)")
        index_file, parts = path, read_manifest(path).part_paths(path.parent)
    else:
        index_file, parts = index_path(path), [path]
        with contextlib.suppress(StaleIndexError):  # rows added with `simclr index --add` belong to it too
            recorded = read_manifest(index_file).part_paths(index_file.parent)
            if recorded[0].resolve() == path.resolve():
                parts = recorded
    features = load_parts(parts)
    try:
        index, manifest = load_index(index_file, mmap=mmap)
        built_from = [part.resolve() for part in manifest.part_paths(index_file.parent)]
        if built_from != [part.resolve() for part in parts]:
            raise StaleIndexError(f"{index_file} was built from {', '.join(map(str, built_from))}, not {path}")
        if manifest.vectors + len(manifest.removed) != len(features.vectors):
            raise StaleIndexError(f"{index_file} holds {manifest.vectors} rows (and {len(manifest.removed)} "
                                  f"removed), its features {len(features.vectors)}")
        return dataclasses.replace(features, removed=frozenset(manifest.removed)), index
    except FileNotFoundError:
        stale = None
    except StaleIndexError as error:
        stale = error
        rebuild = " ".join(map(str, parts)) + (f" --out {index_file}" if index_file != default_index_file(parts)
                                                else "")
        if len(features.vectors) > EXACT_UP_TO:
            raise StaleIndexError(f"{stale}: rebuild it with `simclr index {rebuild}`") from None
        # In memory only: a reader never writes over an index that a writer (simclr index --add) may be changing.
        log.warning("%s; searching an exact index built in memory (`simclr index %s` saves one)", stale, rebuild)
        kind = "flat"
    removed_paths = removals_of(index_file)  # a rebuild keeps what --remove took out
    index, report = build_index(vector_source(parts), kind=kind)
    removed = leave_out(index, parts, removed_paths)
    if stale is None:  # there was no index: save the one built, as `simclr index` would
        save_index(index, parts, report, removed, index_file, removed_paths)
        log.info("built a %s index of %d vectors: %s", report.kind, report.vectors, index_file)
    return dataclasses.replace(features, removed=frozenset(removed)), index


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
        scores, rows = search(index, embeddings, k, vector_source(list(features.parts)))
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
