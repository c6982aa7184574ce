"""Decoding many image files in worker processes: results come back in input order, memory stays bounded."""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np

from simclr.data.decode import DECODE_ERRORS
from simclr.data.images import load_image
from simclr.lifetime import die_with_parent


def decode_many(paths: Sequence[str | Path], size: int) -> tuple[np.ndarray, list[str | None]]:
    """Decode files to uint8 [n_ok, size, size, 3]; per path the failure reason or None (runs in a worker)."""
    images, errors = [], []
    for path in paths:
        try:
            images.append(load_image(Path(path), size))
            errors.append(None)
        except DECODE_ERRORS as error:
            errors.append(f"{type(error).__name__}: {str(error).strip() or 'unreadable'}")
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, errors


def decode_chunks(chunks: Iterable[Sequence[str | Path]], size: int, workers: int | None = None,
                  prefetch: int = 2) -> Iterator[tuple[np.ndarray, list[str | None]]]:
    """`decode_many` of each chunk of paths, in order. Decoding runs in `workers` processes (None: one per CPU;
    0: in this process), at most `prefetch` chunks per worker ahead of the consumer (chunks are taken from the
    iterable only as they are submitted, so it can stream)."""
    workers = os.cpu_count() or 1 if workers is None else workers
    if workers == 0:
        for chunk in chunks:
            yield decode_many(chunk, size)
        return
    chunks = iter(chunks)
    with ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(signal.SIGKILL,)) as pool:
        pending: deque[Future] = deque(pool.submit(decode_many, chunk, size)
                                       for chunk in islice(chunks, workers * prefetch))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(decode_many, chunk, size) for chunk in islice(chunks, 1))
            yield result
