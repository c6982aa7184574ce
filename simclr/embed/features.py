"""Reading what simclr-embed wrote: feats.npy and its feats.jsonl sidecar."""

from __future__ import annotations

import json
import os
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
    if vectors.ndim != 2:
        raise ValueError(f"{path}: an array of shape {vectors.shape}, not [N, D] features (re-run simclr-embed)")
    header, paths, labels, failures, summary = _read_sidecar(sidecar)
    if summary is None or summary.get("rows") != len(vectors) or len(paths) != len(vectors):
        raise ValueError(f"{path} ({len(vectors)} rows) and {sidecar} ({len(paths)} images) do not match; "
                         "re-run simclr-embed")
    if header.cwd != os.getcwd():  # relative paths were recorded from another working directory
        paths = [p if os.path.isabs(p) else os.path.normpath(os.path.join(header.cwd, p)) for p in paths]
    return Features(path, vectors, paths, labels, failures, header)


def _read_sidecar(sidecar: Path):
    """(header, paths, labels, failures, summary) of a sidecar; ValueError names the file and line of any record
    that is not what simclr-embed writes, rows out of order included."""
    header, paths, labels, failures, summary = None, [], [], [], None
    with open(sidecar) as file:
        for number, line in enumerate(file, start=1):
            try:
                record = json.loads(line)
                if number == 1:
                    header = FeaturesHeader.from_json(record, sidecar)
                elif "summary" in record:
                    summary = record["summary"]
                    if not isinstance(summary, dict):
                        raise ValueError("the summary is not an object")
                elif record["row"] is None:
                    failures.append({**record, "path": str(record["path"])})
                elif record["row"] != len(paths):
                    raise ValueError(f"row {record['row']} where row {len(paths)} comes next")
                else:
                    paths.append(str(record["path"]))
                    labels.append(record.get("class"))
            except (ValueError, KeyError, TypeError) as error:
                reason = f"missing {error}" if isinstance(error, KeyError) else str(error)
                raise ValueError(f"{sidecar}, line {number}: not a simclr-embed record ({reason}); re-run "
                                 "simclr-embed") from None
    if header is None:
        raise ValueError(f"{sidecar}: empty (re-run simclr-embed)")
    return header, paths, labels, failures, summary
