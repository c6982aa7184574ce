"""An index on disk: feats.faiss and its manifest feats.faiss.json.

The manifest names the features files the index was built from (its parts, in row order: row ids run through them),
the rows removed since, the index file, each with its size, modification time and sha256, and how the index was
built. An index is used only while every file is as recorded (a file whose size or time changed is hashed again);
it is opened memory-mapped, so an index larger than memory can be searched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr.atomic import replaced_together
from simclr.errors import first_line
from simclr.export.layout import sha256_of

MANIFEST_FORMAT = "simclr-index"
MANIFEST_VERSION = 2


class StaleIndexError(ValueError):
    """An index that was not built from its features as they are now, or whose file is damaged."""


def index_path(features_path: Path) -> Path:
    """feats.npy -> feats.faiss"""
    return Path(features_path).with_suffix(".faiss")


def manifest_path(index_file: Path) -> Path:
    """feats.faiss -> feats.faiss.json"""
    return Path(f"{index_file}.json")


@dataclass(frozen=True)
class FileStamp:
    """A file as it was recorded: its path (relative to the manifest's folder when inside it), size, time, sha256."""

    name: str
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: Path, folder: Path, sha256: str | None = None, known: FileStamp | None = None) -> FileStamp:
        """The stamp of `path` now; `known` (its earlier stamp) is taken as it is when size and time still match,
        so that a file is not hashed again."""
        stat = path.stat()
        name = _name_in(path, folder)
        if known is not None and (known.name, known.size, known.mtime_ns) == (name, stat.st_size, stat.st_mtime_ns):
            return known
        return cls(name, stat.st_size, stat.st_mtime_ns, sha256 or sha256_of(path))

    def path(self, folder: Path) -> Path:
        return folder / self.name

    def unchanged(self, folder: Path) -> bool:
        """Whether the file is still the one recorded (hashed again only when its size or time changed)."""
        path = self.path(folder)
        try:
            stat = path.stat()
        except OSError:
            return False
        return (stat.st_size, stat.st_mtime_ns) == (self.size, self.mtime_ns) or (
            stat.st_size == self.size and sha256_of(path) == self.sha256)


def _name_in(path: Path, folder: Path) -> str:
    """`path` relative to the manifest's folder when inside it, else absolute."""
    absolute, base = Path(path).resolve(), Path(folder).resolve()
    return str(absolute.relative_to(base)) if absolute.is_relative_to(base) else str(absolute)


@dataclass(frozen=True)
class Part:
    features: FileStamp
    rows: int


@dataclass(frozen=True)
class IndexManifest:
    index: FileStamp
    parts: tuple[Part, ...]
    removed: tuple[int, ...]  # row ids taken out of the index since it was built
    vectors: int
    dim: int
    report: dict | None  # how it was built: kind, parameters, recall, query time, memory
    removed_paths: tuple[str, ...] = ()  # the images taken out (path keys): a rebuild leaves them out again

    def part_paths(self, folder: Path) -> list[Path]:
        return [part.features.path(folder) for part in self.parts]

    def to_json(self) -> dict:
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, record: dict) -> IndexManifest:
        if record.get("format") != MANIFEST_FORMAT or record.get("version") != MANIFEST_VERSION:
            raise ValueError(f"not a version {MANIFEST_VERSION} {MANIFEST_FORMAT} manifest")
        return cls(FileStamp(**record["index"]),
                   tuple(Part(FileStamp(**part["features"]), int(part["rows"])) for part in record["parts"]),
                   tuple(int(row) for row in record["removed"]), int(record["vectors"]), int(record["dim"]),
                   record.get("report"), tuple(str(path) for path in record.get("removed_paths", ())))


def save_index(index, parts: Path | list[Path], report=None, removed: tuple[int, ...] = (),
               index_file: Path | None = None, removed_paths: tuple[str, ...] = ()) -> Path:
    """Write `index` and its manifest, which binds it to the features files `parts` (one path: the index goes
    beside it as feats.faiss), the `removed` row ids and the `removed_paths` they are the images of; the report
    gets the index file's size. Returns the index path.

    Interrupted at any moment (Ctrl-C, SIGKILL, a full disk), the previous index and manifest stay whole and usable:
    the features are hashed first (only those changed since the previous manifest), the index is hashed as it
    streams into a temporary file beside the old one, and the new pair replaces the old one only when both are
    written and synced, by two renames back to back."""
    import faiss

    parts = [Path(part) for part in ([parts] if isinstance(parts, str | os.PathLike) else parts)]
    index_file = Path(index_file or index_path(parts[0]))
    folder = index_file.parent
    rows = [np.load(path, mmap_mode="r").shape[0] for path in parts]
    if sum(rows) != index.ntotal + len(removed):
        raise ValueError(f"{index_file}: {index.ntotal} rows (and {len(removed)} removed) for features of "
                         f"{sum(rows)} rows")
    try:
        known = {part.features.name: part.features for part in read_manifest(index_file).parts}
    except StaleIndexError:
        known = {}
    stamps = [FileStamp.of(path, folder, known=known.get(_name_in(path, folder))) for path in parts]
    report = dataclasses.asdict(report) if dataclasses.is_dataclass(report) else report
    with replaced_together(index_file, manifest_path(index_file)) as (index_out, manifest_out):
        digest = hashlib.sha256()

        def write(data: bytes) -> int:
            digest.update(data)
            return index_out.write(data)

        faiss.write_index(index, faiss.PyCallbackIOWriter(write))  # streamed: no copy of the index in memory
        index_out.flush()
        written = os.fstat(index_out.fileno())  # a rename keeps the size and the time
        stamp = FileStamp(_name_in(index_file, folder), written.st_size, written.st_mtime_ns, digest.hexdigest())
        manifest = IndexManifest(stamp, tuple(Part(part, count) for part, count in zip(stamps, rows, strict=True)),
                                 tuple(sorted(removed)), index.ntotal, index.d,
                                 report and {**report, "index_bytes": written.st_size},
                                 tuple(sorted(set(removed_paths))))
        manifest_out.write((json.dumps(manifest.to_json(), indent=2) + "\n").encode())
    return index_file


def read_manifest(index_file: Path) -> IndexManifest:
    """The manifest of `index_file`; StaleIndexError when there is none that can be read."""
    path = manifest_path(index_file)
    try:
        return IndexManifest.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StaleIndexError(f"{index_file}: no readable record of what it was built from ({path}: "
                              f"{first_line(error)})") from None


def index_report(index_file: Path) -> dict | None:
    """The build report in the manifest of `index_file` (kind, parameters, recall), if there is one."""
    try:
        return read_manifest(index_file).report
    except StaleIndexError:
        return None


def load_index(index_file: Path, mmap: bool = True):
    """(index, manifest) of `index_file`, memory-mapped unless `mmap` is False (to change it).
    FileNotFoundError when there is none; StaleIndexError when a features file changed since it was built, or the
    index file is damaged."""
    import faiss

    index_file = Path(index_file)
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file}: no such index")
    manifest = read_manifest(index_file)
    folder = index_file.parent
    for part in manifest.parts:
        if not part.features.unchanged(folder):
            raise StaleIndexError(f"{index_file} was built from other features than {part.features.path(folder)} "
                                  "holds now")
    if not manifest.index.unchanged(folder):
        raise StaleIndexError(f"{index_file}: damaged (its checksum differs from the one recorded when it was "
                              "built)")
    try:
        index = faiss.read_index(str(index_file), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    except RuntimeError as error:
        raise StaleIndexError(f"{index_file}: not a FAISS index ({first_line(error)})") from None
    if (index.ntotal, index.d) != (manifest.vectors, manifest.dim):
        raise StaleIndexError(f"{index_file} holds {index.ntotal} vectors of {index.d} dims, its manifest "
                              f"{manifest.vectors} of {manifest.dim}")
    return index, manifest
