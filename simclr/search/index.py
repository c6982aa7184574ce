"""FAISS indexes over embeddings: cosine similarity as inner product on L2-normalised vectors.

Exact (IndexFlatIP) for small collections; for large ones an inverted-file index (IVF, optionally with product
quantisation) whose nprobe is raised until recall@10 against exact search, measured on a sample at build time,
reaches the target.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr.atomic import atomic_write_bytes, atomic_write_text
from simclr.embed.features import unit_rows
from simclr.errors import first_line
from simclr.export.layout import sha256_of

KINDS = ("auto", "flat", "ivf", "ivfpq")
EXACT_UP_TO = 50_000  # `auto` builds an exact index up to this many vectors


@dataclass(frozen=True)
class IndexReport:
    kind: str
    vectors: int
    dim: int
    nlist: int | None
    nprobe: int | None
    recall_at_10: float | None  # of the approximate index against exact search, on a sample
    build_seconds: float


def index_path(features_path: Path) -> Path:
    """feats.npy -> feats.faiss"""
    return Path(features_path).with_suffix(".faiss")


def build_index(vectors: np.ndarray, kind: str = "auto", nlist: int | None = None, pq_bytes: int | None = None,
                target_recall: float = 0.95, sample_queries: int = 500, seed: int = 0):
    """A FAISS index of the normalised `vectors` [N, D] and its report (with measured recall when approximate)."""
    import time

    import faiss

    if kind not in KINDS:
        raise ValueError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
    data = unit_rows(vectors)
    count, dim = data.shape
    if count == 0:
        raise ValueError("no vectors to index")
    if kind == "auto":
        kind = "flat" if count <= EXACT_UP_TO else "ivf"
    started = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(data)
        return index, IndexReport(kind="flat", vectors=count, dim=dim, nlist=None, nprobe=None, recall_at_10=None,
                                  build_seconds=time.perf_counter() - started)
    if nlist is not None and not 1 <= nlist <= count:
        raise ValueError(f"--nlist {nlist}: must be 1 to the number of vectors ({count})")
    nlist = nlist or max(1, min(int(4 * math.sqrt(count)), count // 39))  # FAISS wants >= 39 training points a list
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivfpq":
        code_bytes = pq_bytes or _pq_bytes(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, code_bytes, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    training = data[rng.choice(count, size=min(count, 256 * nlist), replace=False)]
    index.train(training)
    index.add(data)
    queries = data[rng.choice(count, size=min(count, sample_queries), replace=False)]
    _, exact = _exact_neighbours(data, queries, 10)
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, approximate = index.search(queries, min(10, count))
        recall = recall_at_k(approximate, exact)
        if recall >= target_recall or nprobe >= nlist:
            break
        nprobe = min(nlist, nprobe * 2)
    return index, IndexReport(kind=kind, vectors=count, dim=dim, nlist=nlist, nprobe=nprobe, recall_at_10=recall,
                              build_seconds=time.perf_counter() - started)


def _pq_bytes(dim: int) -> int:
    """The largest of 64, 32, 16, 8 bytes per vector that divides the dimension."""
    return next((m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0 and m <= dim), 1)


def _exact_neighbours(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    exact = faiss.IndexFlatIP(data.shape[1])
    exact.add(data)
    return exact.search(queries, min(k, len(data)))


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k found in its approximate top-k."""
    hits = [len(set(a[a >= 0]) & set(e)) / len(e) for a, e in zip(approximate, exact, strict=True)]
    return float(np.mean(hits))


class StaleIndexError(ValueError):
    """An index that was not built from the features beside it as they are now, or whose file is damaged."""


def index_record_path(features_path: Path) -> Path:
    """feats.npy -> feats.faiss.json: what the index was built from, and its own checksum."""
    return Path(f"{index_path(features_path)}.json")


def save_index(index, features_path: Path, report: IndexReport | None = None) -> Path:
    """Write the index of `features_path` beside it (feats.faiss), atomically, with a record that binds it to the
    features' sha256 and its own, and keeps its build `report` (kind, recall). Returns the index path."""
    import dataclasses

    import faiss

    serialized = faiss.serialize_index(index).tobytes()
    path = index_path(features_path)
    atomic_write_bytes(path, lambda file: file.write(serialized))
    stat = Path(features_path).stat()
    record = {"features": Path(features_path).name, "features_sha256": sha256_of(features_path),
              "features_size": stat.st_size, "features_mtime_ns": stat.st_mtime_ns,
              "index_sha256": hashlib.sha256(serialized).hexdigest(), "vectors": index.ntotal, "dim": index.d,
              "report": dataclasses.asdict(report) if report else None}
    atomic_write_text(index_record_path(features_path), json.dumps(record, indent=2) + "\n")
    return path


def index_report(features_path: Path) -> dict | None:
    """The build report recorded beside the index of `features_path` (kind, nlist, nprobe, recall_at_10), if any."""
    try:
        return json.loads(index_record_path(features_path).read_text()).get("report")
    except (OSError, ValueError, AttributeError):
        return None


def load_index(features_path: Path):
    """The index of `features_path`. FileNotFoundError when there is none; StaleIndexError when it was built from
    other features (they changed since) or its file is damaged."""
    import faiss

    path, record_path = index_path(features_path), index_record_path(features_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such index")
    try:
        record = json.loads(record_path.read_text())
        bound = record["features_sha256"], record["index_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StaleIndexError(f"{path}: no readable record of what it was built from ({record_path})") from None
    stat = Path(features_path).stat()
    unchanged = (record.get("features_size"), record.get("features_mtime_ns")) == (stat.st_size, stat.st_mtime_ns)
    if not unchanged and bound[0] != sha256_of(features_path):  # hash a large file only when it was touched
        raise StaleIndexError(f"{path} was built from other features than {features_path} holds now")
    serialized = path.read_bytes()
    if hashlib.sha256(serialized).hexdigest() != bound[1]:
        raise StaleIndexError(f"{path}: damaged (its checksum differs from the one recorded when it was built)")
    try:
        return faiss.deserialize_index(np.frombuffer(serialized, dtype=np.uint8))
    except RuntimeError as error:
        raise StaleIndexError(f"{path}: not a FAISS index ({first_line(error)})") from None


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores [Q, k] and row ids [Q, k] (-1 where fewer than k rows exist) of normalised `queries`."""
    if k < 1:
        raise ValueError(f"-k {k}: must be at least 1")
    return index.search(unit_rows(queries), min(k, index.ntotal))
