"""Writing embeddings: feats.npy (float32 [N, D]) and the feats.jsonl sidecar, streamed and finished atomically.

While a run is going, rows go to `<out>.partial` (raw float32) and records to `<sidecar>.partial`; only a finished
run turns them into a valid feats.npy (header + rows, renamed into place) and feats.jsonl. An interrupted run leaves
no file that looks valid, and `resume` continues from the partial files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from simclr.atomic import create_own, open_own, replaced_together
from simclr.embed.sidecar import FeaturesHeader, sidecar_path
from simclr.locks import output_lock


def features_out(out: Path) -> Path:
    """`out` if it can name a features file; ValueError naming --out otherwise."""
    out = Path(out)
    if out.suffix != ".npy" or out.is_dir():
        raise ValueError(f"--out {out}: must name a .npy file" + (" (it is a folder)" if out.is_dir() else ""))
    return out


class FeatureWriter:
    """Append embeddings and per-image records; `finish()` publishes feats.npy and feats.jsonl."""

    def __init__(self, out: Path, dim: int, header: FeaturesHeader, resume: bool) -> None:
        self.out = features_out(out)
        self.dim = dim
        self.sidecar = sidecar_path(self.out)
        self.rows_partial = Path(f"{self.out}.partial")
        self.records_partial = Path(f"{self.sidecar}.partial")
        self.header = header
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(output_lock(self.out))  # one writer per output, until the writer's block ends
        try:
            self._open(resume)
        except BaseException:
            self._lock.close()
            raise

    def _open(self, resume: bool) -> None:
        self.rows = 0
        self.done = 0  # images handled (embedded or failed): where a resumed run starts
        self.failed = 0
        # Every partial file is opened with O_NOFOLLOW (and created with O_EXCL): a link planted in a shared output
        # folder is refused, never written through (simclr.atomic.create_own / open_own).
        if resume and self._resumable():
            self._reopen()
        else:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            with create_own(self.rows_partial), create_own(self.records_partial) as records:
                records.write((json.dumps(self.header.to_json()) + "\n").encode())
        # Open for the writer's lifetime; close() and finish() close them (the writer is a context manager).
        self._rows_file = open_own(self.rows_partial, "ab")
        self._records_file = open_own(self.records_partial, "ab")

    def _resumable(self) -> bool:
        if not (self.rows_partial.exists() and self.records_partial.exists()):
            return False
        with open_own(self.records_partial, "rb") as file:
            first = file.readline().decode("utf-8", "replace")
        try:
            saved = FeaturesHeader.from_json(json.loads(first), self.records_partial)
        except ValueError:  # a header cut short: nothing of that run can be trusted
            return False
        if not saved.same_run(self.header):
            same_files = saved.listing_sha256 == self.header.listing_sha256
            changed = "inputs, model or settings" if same_files else "image files"
            raise ValueError(f"{self.records_partial}: the interrupted run had other {changed}; run without --resume "
                             "to start over")
        return True

    def _reopen(self) -> None:
        """Keep the complete records whose rows are all on disk, and exactly those rows (after a power loss the
        rows file can be shorter than its records: the run then resumes from what is really there)."""
        with open_own(self.records_partial, "rb") as file:
            lines = file.read().decode().split("\n")
        rows_on_disk = self.rows_partial.stat().st_size // (self.dim * 4)
        kept: list[str] = []
        for line in lines[1:-1]:  # the last piece is "" or a line cut short
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if record.get("row") is not None and record["row"] >= rows_on_disk:
                break
            kept.append(line)
        self.rows = sum(1 for line in kept if json.loads(line).get("row") is not None)
        self.failed = len(kept) - self.rows
        self.done = len(kept)
        with open_own(self.records_partial, "r+b") as file:
            file.write(("\n".join([lines[0], *kept]) + "\n").encode())
            file.truncate()
        with open_own(self.rows_partial, "r+b") as file:
            file.truncate(self.rows * self.dim * 4)

    def write(self, paths: list[str], labels: list[str | None], embeddings: np.ndarray, errors: list[str | None],
              files: list[dict | None] | None = None) -> None:
        """One batch in input order: `embeddings` [n_ok, D] belong to the entries whose error is None; `files`
        holds, per entry, its file's record (`file_record`) or None."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.shape != (sum(error is None for error in errors), self.dim):
            raise ValueError(f"embeddings of shape {embeddings.shape} for {len(paths)} images of dimension {self.dim}")
        self._rows_file.write(embeddings.tobytes())
        self._rows_file.flush()
        os.fsync(self._rows_file.fileno())  # rows on disk first: records never point past them, even on power loss
        lines = []
        for path, label, error, file in zip(paths, labels, errors, files or [None] * len(paths), strict=True):
            if error is None:
                record = {"row": self.rows, "path": path, "class": label}
                if file is not None:
                    record["file"] = file
                self.rows += 1
            else:
                record = {"row": None, "path": path, "class": label, "error": error}
                self.failed += 1
            lines.append(json.dumps(record))
        self._records_file.write(("\n".join(lines) + "\n").encode())
        self._records_file.flush()
        os.fsync(self._records_file.fileno())
        self.done += len(paths)

    def finish(self) -> None:
        """Publish feats.npy (header + rows) and feats.jsonl (records + summary) together: both are written and
        synced beside the previous pair before either replaces it, so a failure (a full disk) leaves that pair whole
        and the partial files ready for --resume. Then the partial files are removed."""
        self.close()
        header_shape = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                        "shape": (self.rows, self.dim)}
        summary = {"summary": {"rows": self.rows, "failed": self.failed, "dim": self.dim}}
        with replaced_together(self.out, self.sidecar) as (features, sidecar):
            np.lib.format.write_array_header_1_0(features, header_shape)
            with open_own(self.rows_partial, "rb") as rows:
                shutil.copyfileobj(rows, features, 1 << 22)
            with open_own(self.records_partial, "rb") as records:
                shutil.copyfileobj(records, sidecar, 1 << 22)
            sidecar.write((json.dumps(summary) + "\n").encode())
        self.rows_partial.unlink()
        self.records_partial.unlink()

    def close(self) -> None:
        if not self._rows_file.closed:
            self._rows_file.close()
            self._records_file.close()

    def __exit__(self, *exc) -> None:
        self.close()
        self._lock.close()

    def __enter__(self) -> FeatureWriter:
        return self
