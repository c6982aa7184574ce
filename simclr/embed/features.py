"""Reading what simclr-embed wrote: feats.npy and its feats.jsonl sidecar."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr.embed.encoder import ModelIdentity
from simclr.embed.sidecar import FeaturesHeader, sidecar_path


@dataclass(frozen=True)
class Features:
    """Embeddings [N, D] (memory-mapped) with, per row, the image path and class, plus the run's header."""

    path: Path
    vectors: np.ndarray
    paths: list[str]
    labels: list[str | None]
    failures: list[dict]
    header: FeaturesHeader

    @property
    def model(self) -> ModelIdentity:
        return self.header.model


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """A float32 copy of [N, D] with unit-length rows (zero rows stay zero)."""
    array = np.array(vectors, dtype=np.float32, copy=True)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def load_features(path: Path) -> Features:
    """Open feats.npy and its sidecar; ValueError/FileNotFoundError name the file when they do not fit together."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such features file (make one with simclr-embed IMAGES --out {path})")
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar}: the sidecar of {path} is missing (re-run simclr-embed)")
    try:
        vectors = np.load(path, mmap_mode="r")
    except ValueError as error:
        raise ValueError(f"{path}: not a .npy array ({error})") from None
    with open(sidecar) as file:
        header = FeaturesHeader.from_json(json.loads(file.readline()), sidecar)
        paths, labels, failures, summary = [], [], [], None
        for line in file:
            record = json.loads(line)
            if "summary" in record:
                summary = record["summary"]
            elif record.get("row") is None:
                failures.append(record)
            else:
                paths.append(record["path"])
                labels.append(record.get("class"))
    if summary is None or vectors.ndim != 2 or summary["rows"] != len(vectors) or len(paths) != len(vectors):
        raise ValueError(f"{path} ({len(vectors)} rows) and {sidecar} ({len(paths)} images) do not match; "
                         "re-run simclr-embed")
    return Features(path, vectors, paths, labels, failures, header)
