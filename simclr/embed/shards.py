"""Embedding as many jobs: `simclr-embed --shard K/N` takes every N-th image of the sorted list (starting at the
K-th) and writes feats-K-of-N.npy; `simclr merge` puts the N parts back together, streamed, into the very files one
unsharded run would have written."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from simclr.embed.sidecar import FeaturesHeader, read_header, sidecar_path
from simclr.embed.writer import FeatureWriter

SHARD_PATTERN = re.compile(r"^(\d+)/(\d+)$")
PART_PATTERN = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-of-(?P<count>\d+)$")


def parse_shard(text: str) -> tuple[int, int]:
    """"K/N" -> (K, N) with 0 <= K < N; ValueError names --shard."""
    match = SHARD_PATTERN.fullmatch(text.strip())
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"--shard {text}: give K/N with 0 <= K < N (job K of N, counting from 0; e.g. "
                         "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return int(match[1]), int(match[2])


def shard_path(out: Path, index: int, count: int) -> Path:
    """feats.npy -> feats-K-of-N.npy"""
    out = Path(out)
    return out.with_name(f"{out.stem}-{index}-of-{count}{out.suffix}")


@dataclass(frozen=True)
class MergeResult:
    features: Path
    sidecar: Path
    rows: int
    failed: int
    parts: int
    part_rows: dict[Path, np.ndarray]  # each part's rows, in order: their row numbers in the merged file


def merge_shards(parts: list[Path], out: Path, batch: int = 4096) -> MergeResult:
    """Write `out` (and its sidecar) from the N parts of one sharded run, as the unsharded run would have: checks
    that all N parts are there, finished, from the same model, inputs and list; streams rows and records (at most
    `batch` images of each part in memory)."""
    headers = _check_parts(parts)
    if Path(out).resolve() in {Path(part).resolve() for part in parts}:
        raise ValueError(f"--out {out}: is one of the parts; name another file")
    first = headers[0]
    count = first.shard.count
    whole = replace(first, images=first.shard.images, listing_sha256=first.shard.listing_sha256, shard=None)
    ordered = sorted(zip(headers, parts, strict=True), key=lambda pair: pair[0].shard.index)
    readers = [_PartReader(path) for _, path in ordered]
    part_rows: list[list[np.ndarray]] = [[] for _ in range(count)]
    with FeatureWriter(Path(out), first.model.embedding_dim, whole, resume=False) as writer:
        while True:
            chunks = [reader.take(batch) for reader in readers]
            if not chunks[0]:
                break
            merged = [chunks[i % count][i // count] for i in range(sum(len(chunk) for chunk in chunks))]
            with_row = [i for i, (_, _, vector, _, _) in enumerate(merged) if vector is not None]
            embedded = [merged[i][2] for i in with_row]
            from_part = np.array(with_row, dtype=np.int64) % count
            rows = writer.rows + np.arange(len(with_row))
            for part, taken in enumerate(part_rows):
                taken.append(rows[from_part == part])
            writer.write([path for path, *_ in merged], [label for _, label, *_ in merged],
                         np.stack(embedded) if embedded else np.zeros((0, writer.dim), np.float32),
                         [error for *_, error, _ in merged], [file for *_, file in merged])
        if any(reader.take(1) for reader in readers):
            raise ValueError("the parts hold more images than their headers say: re-run the jobs")
        for reader in readers:
            reader.check_finished()
        writer.finish()
    return MergeResult(writer.out, writer.sidecar, writer.rows, writer.failed, count,
                       {Path(path): np.concatenate(rows) if rows else np.zeros(0, np.int64)
                        for (_, path), rows in zip(ordered, part_rows, strict=True)})


def _check_parts(parts: list[Path]) -> list[FeaturesHeader]:
    """Every part's header; ValueError naming what is missing or does not belong."""
    if not parts:
        raise ValueError("give the parts to merge: feats-*-of-N.npy")
    headers = []
    for path in parts:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such part (a job of simclr-embed --shard K/N writes it when it "
                                    "finishes)")
        header = _header(path)
        if header.shard is None:
            raise ValueError(f"{path}: not a part of a sharded run (simclr-embed --shard K/N writes those)")
        headers.append(header)
    first = headers[0]
    for path, header in zip(parts, headers, strict=True):
        if replace(header, images=0, listing_sha256="", model_source="", shard=None) != replace(
                first, images=0, listing_sha256="", model_source="", shard=None):
            raise ValueError(f"{path}: another model, other inputs or other settings than {parts[0]}")
        if (header.shard.count, header.shard.images, header.shard.listing_sha256) != (
                first.shard.count, first.shard.images, first.shard.listing_sha256):
            raise ValueError(f"{path}: part of another list of images than {parts[0]} (the files changed between "
                             "jobs?)")
    indices = sorted(header.shard.index for header in headers)
    missing = sorted(set(range(first.shard.count)) - set(indices))
    if missing or len(indices) != first.shard.count:
        repeated = sorted({index for index in indices if indices.count(index) > 1})
        raise ValueError(f"parts of {first.shard.count}: " + (f"missing {', '.join(map(str, missing))}" if missing
                                                              else f"{', '.join(map(str, repeated))} given twice"))
    return headers


def _header(path: Path) -> FeaturesHeader:
    try:
        return read_header(path)
    except FileNotFoundError as missing:
        raise FileNotFoundError(f"{missing} (re-run that job)") from None


class _PartReader:
    """A part's records in order, each with its row's vector (memory-mapped) or its error, checked as they stream
    against the part's .npy as load_features checks a features file: ValueError names the part and its line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.vectors = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as error:
            raise ValueError(f"{path}: not a .npy array ({error}); re-run that job") from None
        if self.vectors.ndim != 2:
            raise ValueError(f"{path}: an array of shape {self.vectors.shape}, not [N, D]; re-run that job")
        self.rows = 0  # rows read so far
        self.summary: dict | None = None
        self.records = self._records(sidecar_path(path))

    def _records(self, sidecar: Path) -> Iterator[dict]:
        with open(sidecar) as file:
            file.readline()
            for number, line in enumerate(file, start=2):
                try:
                    record = json.loads(line)
                    if "summary" in record:
                        self.summary = record["summary"]
                        return
                    row = record["row"]
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{sidecar}, line {number}: cut short or not a simclr-embed record; re-run "
                                     "that job") from None
                if row is not None:
                    if row != self.rows or row >= len(self.vectors):
                        raise ValueError(f"{sidecar}, line {number}: row {row} where row {self.rows} comes next "
                                         f"({self.path} holds {len(self.vectors)}); re-run that job")
                    self.rows += 1
                yield record
        raise ValueError(f"{sidecar}: no summary line (the job did not finish, or the file was cut short); re-run "
                         "that job")

    def check_finished(self) -> None:
        """ValueError unless every record was read and its summary counts the part's rows."""
        if self.summary is None or not isinstance(self.summary, dict) or \
                self.summary.get("rows") != self.rows or self.rows != len(self.vectors):
            raise ValueError(f"{self.path} ({len(self.vectors)} rows) and its sidecar ({self.rows} rows, summary "
                             f"{self.summary}) do not match; re-run that job")

    def take(self, count: int) -> list[tuple[str, str | None, np.ndarray | None, str | None, dict | None]]:
        """(path, class, vector or None, error or None, file record or None) of the next `count` images."""
        taken = []
        for record in self.records:
            row = record.get("row")
            taken.append((record["path"], record.get("class"), None if row is None else self.vectors[row],
                          record.get("error"), record.get("file")))
            if len(taken) == count:
                break
        return taken
