"""Rows to index, in chunks: a float32 [N, D] .npy read with plain reads into one reused buffer (a memory map would
leave every page read in the process's resident set), or an array already in memory. Chunks come L2-normalised."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CHUNK_BYTES = 8 << 20  # rows read at a time: a fixed buffer, whatever the file's size


def normalise_in_place(rows: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero), in place."""
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))  # no temporary the size of `rows`
    rows /= np.maximum(norms, 1e-12)[:, None]
    return rows


class Vectors:
    """The rows of an in-memory [N, D] array (the base of VectorFile, which reads them from disk)."""

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim != 2:
            raise ValueError(f"vectors of shape {array.shape}, not [N, D]")
        self.array = array
        self.count, self.dim = array.shape

    def rows_per_chunk(self) -> int:
        return max(1, CHUNK_BYTES // (4 * self.dim))

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, normalised float32 rows) for consecutive chunks; a chunk is only valid until the next one."""
        step = self.rows_per_chunk()
        for start in range(0, self.count, step):
            yield start, normalise_in_place(np.array(self.array[start:start + step], dtype=np.float32))

    def rows(self, indices: np.ndarray, normalise: bool = True) -> np.ndarray:
        """The rows at `indices` (a sample for training or for measuring recall), normalised unless told not."""
        rows = np.array(self.array[np.asarray(indices)], dtype=np.float32)
        return normalise_in_place(rows) if normalise else rows


class VectorFile(Vectors):
    """The rows of a float32 [N, D] .npy file (C order), read without a memory map. ValueError names the file when
    it is not one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as file:
                major, _ = np.lib.format.read_magic(file)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(file)
                self.offset = file.tell()
        except (ValueError, OSError) as error:
            raise ValueError(f"{path}: not a .npy array ({error})") from None
        if dtype != np.float32 or len(shape) != 2 or fortran:
            raise ValueError(f"{path}: {dtype} of shape {shape}{' in Fortran order' if fortran else ''}; "
                             "vectors to index are float32 [N, D] (what simclr-embed writes)")
        self.count, self.dim = shape
        # Rows are read from the file as it was opened: one renamed over it later is seen only by a new VectorFile.
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115  (closed with the object)
        self._size = os.fstat(self._file.fileno()).st_size
        if self._size < self.offset + 4 * self.count * self.dim:
            raise ValueError(f"{path}: shorter than its header's {self.count} x {self.dim} rows (cut short?)")

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        step = self.rows_per_chunk()
        buffer = np.empty((min(step, self.count), self.dim), np.float32)
        with open(self.path, "rb", buffering=0) as file:
            file.seek(self.offset)
            for start in range(0, self.count, step):
                rows = buffer[:min(step, self.count - start)]
                view = memoryview(rows).cast("B")
                filled = 0
                while filled < len(view):
                    read = file.readinto(view[filled:])
                    if not read:
                        raise ValueError(f"{self.path}: ended before row {start + filled // (4 * self.dim)}")
                    filled += read
                yield start, normalise_in_place(rows)

    def rows(self, indices: np.ndarray, normalise: bool = True) -> np.ndarray:
        """The rows at `indices`, read with pread from the file that was opened: ValueError names the file when
        it was rewritten in place since (where a memory map would die of SIGBUS)."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.dim), np.float32)
        row_bytes = 4 * self.dim
        descriptor = self._file.fileno()
        if os.fstat(descriptor).st_size != self._size:
            raise ValueError(f"{self.path}: rewritten in place since it was opened (replace a features file by "
                             "renaming a new one over it)")
        for position, row in enumerate(indices):
            data = os.pread(descriptor, row_bytes, self.offset + int(row) * row_bytes)
            if len(data) != row_bytes:
                raise ValueError(f"{self.path}: ended before row {int(row)}")
            out[position] = np.frombuffer(data, np.float32)
        return normalise_in_place(out) if normalise else out


class ChainedVectors(Vectors):
    """The rows of several sources one after the other (the parts of an index)."""

    def __init__(self, parts: list[Vectors]) -> None:
        if len({part.dim for part in parts}) != 1:
            raise ValueError(f"parts of {sorted({part.dim for part in parts})} dimensions: an index holds one width")
        self.parts = parts
        self.starts = np.cumsum([0, *(part.count for part in parts)])
        self.count, self.dim = int(self.starts[-1]), parts[0].dim

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start, part in zip(self.starts, self.parts, strict=False):
            for first, chunk in part.chunks():
                yield int(start) + first, chunk

    def rows(self, indices: np.ndarray, normalise: bool = True) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        owner = np.searchsorted(self.starts, indices, side="right") - 1
        out = np.empty((len(indices), self.dim), np.float32)
        for number, part in enumerate(self.parts):
            mine = owner == number
            if mine.any():
                out[mine] = part.rows(indices[mine] - self.starts[number], normalise)
        return out


def vector_source(paths: list[Path]) -> Vectors:
    """The rows of one or several float32 .npy files, read in chunks."""
    files = [VectorFile(path) for path in paths]
    return files[0] if len(files) == 1 else ChainedVectors(files)
