"""Search benchmark: 200,000 vectors of 256 dims, exact (IndexFlatIP) against simclr index auto and ivf, one run.

Data, exactly: rng = np.random.default_rng(0); centres = rng.standard_normal((2000, 256)); then for the 200,000
vectors the centre indices rng.integers(0, 2000, 200_000) and the noise 0.3 * rng.standard_normal((200_000, 256)),
each vector = its centre + its noise, L2-normalised; then 1,000 queries drawn the same way, after the data.
Reports build time, queries/s (a batch of 1,000, and single queries) and recall@10 against exact search.

    python bench/search.py --out bench/results/search.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import faiss
import numpy as np
from common import machine, write_json

from simclr.search.index import build_index, recall_at_k


def clustered(rng: np.random.Generator, centres: np.ndarray, count: int) -> np.ndarray:
    assignment = rng.integers(0, len(centres), count)
    vectors = centres[assignment] + 0.3 * rng.standard_normal((count, centres.shape[1]))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def queries_per_second(index, queries: np.ndarray, k: int, repeats: int, single: int) -> dict:
    batch_runs, single_runs = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        index.search(queries, k)
        batch_runs.append(len(queries) / (time.perf_counter() - started))
        started = time.perf_counter()
        for query in queries[:single]:
            index.search(query[None], k)
        single_runs.append(single / (time.perf_counter() - started))
    return {"batch_qps": statistics.median(batch_runs), "single_qps": statistics.median(single_runs),
            "batch_runs": batch_runs, "single_runs": single_runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default 5)")
    parser.add_argument("--single", type=int, default=200, help="single-query searches per run (default 200)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, 256))
    data = clustered(rng, centres, 200_000)
    queries = clustered(rng, centres, 1_000)

    started = time.perf_counter()
    exact = faiss.IndexFlatIP(256)
    exact.add(data)
    exact_build = time.perf_counter() - started
    _, truth = exact.search(queries, 10)
    exact_speed = queries_per_second(exact, queries, 10, args.repeats, args.single)
    approximate = {}
    for kind in ("auto", "ivf"):  # what simclr index builds at this size, and the inverted file beside it
        index, report = build_index(data, kind=kind)
        _, found = index.search(queries, 10)
        speed = queries_per_second(index, queries, 10, args.repeats, args.single)
        approximate[kind] = {
            "index": report.description, "nlist": report.nlist, "nprobe": report.nprobe,
            "ef_search": report.ef_search, "build_seconds": report.build_seconds,
            "build_sample_recall_at_10": report.recall_at_10, "recall_at_10": recall_at_k(found, truth), **speed,
            "speedup_batch": speed["batch_qps"] / exact_speed["batch_qps"],
            "speedup_single": speed["single_qps"] / exact_speed["single_qps"]}
    write_json({
        "benchmark": "search", "machine": machine(), "faiss": faiss.__version__, "threads": faiss.omp_get_max_threads(),
        "vectors": 200_000, "dim": 256, "queries": 1_000, "k": 10,
        "exact": {"index": "IndexFlatIP", "build_seconds": exact_build, **exact_speed},
        "approximate": approximate,
    }, args.out)


if __name__ == "__main__":
    main()
