"""Training a FAISS index on its sample: on one thread when the sample is small, with what FAISS's C++ prints on
stderr meanwhile (a k-means warning a sub-quantizer, thousands of lines under OPQ) folded into one line."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator

import numpy as np

from simclr.search.plan import PQ_TRAINING_ROWS

# Below this many rows each k-means (one a sub-quantizer) is a few thousand short parallel loops, and OpenMP's waits
# between them cost more than a second thread gains: the codebooks of IVF43,PQ128x5 on 1,750 x 512 trained in 1.4 s
# on one thread, 7.7 s on two, on a busy 2-core machine.
ONE_THREAD_BELOW = PQ_TRAINING_ROWS
_STDERR = threading.Lock()  # fd 2 is the process's: one capture at a time


def train_index(index, sample: np.ndarray) -> str:
    """Train `index` on the normalised rows `sample` [n, D]; one line summing up FAISS's warnings, or ""."""
    import faiss

    threads = faiss.omp_get_max_threads()
    with captured_stderr() as lines:
        if len(sample) < ONE_THREAD_BELOW:
            faiss.omp_set_num_threads(1)
        try:
            index.train(sample)
        finally:
            faiss.omp_set_num_threads(threads)
    return summary(lines)


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """The lines written on file descriptor 2 meanwhile (by C++ code too), in the list yielded once the block
    ends; lines that are not FAISS warnings are written on to stderr then."""
    lines: list[str] = []
    with _STDERR, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if line.startswith("WARNING"):
                    lines.append(line)
                else:
                    os.write(2, f"{line}\n".encode())


def summary(lines: list[str]) -> str:
    """'FAISS warned 2,688 times while training: "WARNING clustering 1750 points ..." (2,688x)' for the distinct
    lines, most frequent first (three at most), or "" for none."""
    if not lines:
        return ""
    counts = Counter(lines).most_common()
    shown = "; ".join(f'"{line}" ({times:,}x)' for line, times in counts[:3])
    more = f"; and {len(counts) - 3} other lines" if len(counts) > 3 else ""
    times = f"{len(lines):,} times" if len(lines) > 1 else "once"
    return f"FAISS warned {times} while training: {shown}{more}"
