"""Reading what simclr-embed wrote: feats.npy and its feats.jsonl sidecar."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr.embed.encoder import ModelIdentity, same_model
from simclr.embed.sidecar import FeaturesHeader, sidecar_path


class StackedRows:
    """The rows of several [N_i, D] arrays (memory-mapped parts) as one [sum N_i, D], for looking rows up."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.starts = np.cumsum([0, *(len(array) for array in arrays)])
        self.shape = (int(self.starts[-1]), arrays[0].shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, row: int) -> np.ndarray:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} of {len(self)}")
        part = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self.arrays[part][row - self.starts[part]]


@dataclass(frozen=True)
class Features:
    """Embeddings [N, D] (memory-mapped) with, per row, the image path and class, plus the run's header."""

    path: Path
    vectors: np.ndarray | StackedRows
    paths: list[str]
    labels: list[str | None]
    failures: list[dict]
    header: FeaturesHeader
    removed: frozenset[int] = frozenset()  # rows taken out of the collection's index (simclr index --remove)
    files: tuple[dict | None, ...] = ()  # per row: the file's size and mtime_ns when it was embedded (None: unknown)
    roots: tuple[str, ...] = ()  # the inputs that were embedded, resolved: the rows' files lie in or are these
    parts: tuple[Path, ...] = ()  # the features files the rows come from, in order

    @property
    def model(self) -> ModelIdentity:
        return self.header.model


def path_key(path: str) -> str:
    """An image path as rows are looked up by it: absolute and normalised."""
    return os.path.normpath(os.path.abspath(path))


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
    header, paths, labels, failures, summary, files = _read_sidecar(sidecar)
    if summary is None or summary.get("rows") != len(vectors) or len(paths) != len(vectors):
        raise ValueError(f"{path} ({len(vectors)} rows) and {sidecar} ({len(paths)} images) do not match; "
                         "re-run simclr-embed")
    if header.cwd != os.getcwd():  # relative paths were recorded from another working directory
        paths = [p if os.path.isabs(p) else os.path.normpath(os.path.join(header.cwd, p)) for p in paths]
    roots = tuple(os.path.realpath(os.path.join(header.cwd, given)) for given in header.inputs)
    return Features(path, vectors, paths, labels, failures, header, files=tuple(files), roots=roots, parts=(path,))


def load_parts(paths: list[Path]) -> Features:
    """The features files of one collection (the parts of an index) as one: rows run through them in order. They
    must come from the same model; ValueError names the part that does not."""
    parts = [load_features(path) for path in paths]
    first = parts[0]
    for part in parts[1:]:
        if not same_model(first.model, part.model) or part.vectors.shape[1] != first.vectors.shape[1]:
            raise ValueError(f"{part.path} was embedded with {part.model.name} v{part.model.version}, {first.path} "
                             f"with {first.model.name} v{first.model.version}: one index holds one model's rows")
    if len(parts) == 1:
        return first
    return Features(first.path, StackedRows([part.vectors for part in parts]),
                    [path for part in parts for path in part.paths], [label for part in parts for label in part.labels],
                    [failure for part in parts for failure in part.failures], first.header,
                    files=tuple(file for part in parts for file in part.files),
                    roots=tuple(dict.fromkeys(root for part in parts for root in part.roots)),
                    parts=tuple(part.path for part in parts))


def _file_record(record) -> dict | None:
    """A row's {"size", "mtime_ns"} as the sidecar holds it (None in sidecars written before they were recorded)."""
    if record is None:
        return None
    if not isinstance(record, dict) or not all(isinstance(record.get(key), int) for key in ("size", "mtime_ns")):
        raise ValueError("its file record is not {\"size\": bytes, \"mtime_ns\": time}")
    return record


def _read_sidecar(sidecar: Path):
    """(header, paths, labels, failures, summary, files) of a sidecar; ValueError names the file and line of any
    record that is not what simclr-embed writes, rows out of order included."""
    header, paths, labels, failures, summary, files = None, [], [], [], None, []
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
                    files.append(_file_record(record.get("file")))
            except (ValueError, KeyError, TypeError) as error:
                reason = f"missing {error}" if isinstance(error, KeyError) else str(error)
                raise ValueError(f"{sidecar}, line {number}: not a simclr-embed record ({reason}); re-run "
                                 "simclr-embed") from None
    if header is None:
        raise ValueError(f"{sidecar}: empty (re-run simclr-embed)")
    return header, paths, labels, failures, summary, files
