"""FAISS indexes over embeddings: cosine similarity as inner product on L2-normalised vectors.

The kind and its parameters come from `plan.plan_index` (a memory budget, or the kind asked for); the index trains
on a sample (`training.train_index`), takes the vectors chunk by chunk (`vectors.VectorFile` reads them without a
memory map), and then an approximate index raises nprobe (IVF) or efSearch (HNSW) until recall@10 against exact
search, measured on a sample of rows, reaches the target, unless the single-query time would pass `max_query_ms`.
A compressed index (IVF-PQ) proposes candidates that are scored again with the rows themselves, in the tuning as in
every search that has them. The three stages (train, add, tune) show progress bars when asked to.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from simclr.embed.features import unit_rows
from simclr.progress import progress_bar
from simclr.search.plan import EXACT_UP_TO, KINDS, IndexPlan, plan_index, training_rows
from simclr.search.training import train_index
from simclr.search.vectors import Vectors

__all__ = ["EXACT_UP_TO", "KINDS", "IndexReport", "build_index", "recall_at_k", "search"]  # EXACT_UP_TO, KINDS: plan's

TIMED_QUERIES = 50  # single queries timed at each setting
SEARCH_PARAMETERS = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch"}
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
RERANK = 10  # a compressed index proposes k x RERANK candidates for exact scoring
PLATEAU = 0.003  # a doubling of nprobe/efSearch that gains less recall than this is not worth its time


@dataclass(frozen=True)
class IndexReport:
    kind: str
    vectors: int
    dim: int
    nlist: int | None
    nprobe: int | None
    recall_at_10: float | None  # against exact search, on a sample of rows (1.0 for an exact index)
    build_seconds: float
    description: str = ""  # FAISS's name of the structure: IVF1024,Flat, OPQ64,IVF4096,PQ64, HNSW32, Flat
    pq_bytes: int | None = None  # IVF-PQ: code bytes a vector
    ef_search: int | None = None
    index_bytes: int = 0  # of the saved index
    query_ms: float | None = None  # median time of one query, searched alone
    target_met: bool = True  # the recall target reached within max_query_ms
    note: str = ""  # why not, when it was not
    peak_rss_bytes: int = 0  # of the building process, as /usr/bin/time -v reports it
    memory_budget: int | None = None
    pq_bits: int | None = None  # IVF-PQ: bits of each sub-quantizer's code (8 unless the collection is small)
    max_query_ms: float | None = None  # the limit asked for
    warnings: tuple[str, ...] = ()  # one line each: the kind does not suit the size, what FAISS warned, the note


def peak_rss_bytes() -> int:
    """The peak resident set of this program so far: VmHWM, what /usr/bin/time -v reports for a process started by
    a small one (getrusage's maximum would also count the memory of a large parent that forked it)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def resident_bytes() -> int:
    """The process's resident set now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_index(vectors: np.ndarray | Vectors, kind: str = "auto", nlist: int | None = None,
                pq_bytes: int | None = None, target_recall: float = 0.95, memory_budget: int | None = None,
                max_query_ms: float | None = None, sample_queries: int = 500, seed: int = 0,
                progress: bool = False):
    """A FAISS index of the normalised rows of `vectors` ([N, D], or a Vectors/VectorFile) and its report.

    `memory_budget` (bytes) bounds the whole process's peak resident memory: the plan leaves out what the process
    already holds. Approximate indexes are tuned to `target_recall` within `max_query_ms` (when given). `pq_bytes`:
    IVF-PQ's sub-quantizers (its code bytes at 8 bits each). `progress`: bars on stderr."""
    import faiss

    source = vectors if isinstance(vectors, Vectors) else Vectors(np.asarray(vectors))
    count, dim = source.count, source.dim
    if count == 0:
        raise ValueError("no vectors to index")
    available = None if memory_budget is None else memory_budget - resident_bytes()
    plan = plan_index(count, dim, kind, available, nlist, pq_bytes)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    index = _new_index(plan, dim)
    warnings = [plan.note] if plan.note else []
    if training := training_rows(plan, count):
        sample = source.rows(np.sort(rng.choice(count, size=training, replace=False)))
        with progress_bar(total=1, desc=f"training {plan.describe()} on {training:,} rows",
                          bar_format="{desc}: {elapsed}", disable=not progress) as bar:
            faiss_warned = train_index(index, sample)
            bar.update()
        warnings += [faiss_warned] if faiss_warned else []
        del sample  # before the rows are added: the memory budget counts it
    queries = source.rows(np.sort(rng.choice(count, size=min(count, sample_queries), replace=False)))
    k = min(10, count)
    exact = faiss.ResultHeap(len(queries), k, keep_max=True)
    with progress_bar(total=count, unit="vec", desc="adding", disable=not progress) as bar:
        for start, chunk in source.chunks():
            add_rows(index, chunk, start)
            if plan.kind != "flat":
                scores, rows = faiss.knn(queries, chunk, min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
                exact.add_result(scores, rows + start)
            bar.update(len(chunk))
    exact.finalize()
    setting, recall, query_ms, note = _tune(index, plan, queries, exact.I, target_recall, max_query_ms, source,
                                            progress)
    return index, IndexReport(
        kind=plan.kind, vectors=count, dim=dim, nlist=plan.nlist, nprobe=setting if plan.kind != "hnsw" else None,
        recall_at_10=recall, build_seconds=time.perf_counter() - started, description=plan.describe(),
        pq_bytes=plan.code_bytes, ef_search=setting if plan.kind == "hnsw" else None, query_ms=query_ms,
        target_met=not note, note=note, peak_rss_bytes=peak_rss_bytes(), memory_budget=memory_budget,
        pq_bits=plan.pq_bits if plan.kind == "ivfpq" else None, max_query_ms=max_query_ms,
        warnings=(*warnings, *([note] if note else [])))


def _new_index(plan: IndexPlan, dim: int):
    import faiss

    if plan.kind == "flat":
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim))  # row ids of its own, so that rows can be removed
    if plan.kind == "hnsw":  # row ids of its own too, so that a merge of its features can renumber them
        return faiss.IndexIDMap(faiss.IndexHNSWFlat(dim, plan.hnsw_m, faiss.METRIC_INNER_PRODUCT))
    quantizer = faiss.IndexFlatIP(dim)
    if plan.kind == "ivf":
        return faiss.IndexIVFFlat(quantizer, dim, plan.nlist, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIVFPQ(quantizer, dim, plan.nlist, plan.pq_m, plan.pq_bits, faiss.METRIC_INNER_PRODUCT)
    if not plan.opq:
        return index
    rotation = faiss.OPQMatrix(dim, plan.pq_m)
    rotation.niter = 20  # of 50: the rotation's gain flattens early, and training it is most of the build
    return faiss.IndexPreTransform(rotation, index)  # FAISS's Python keeps the parts alive with the whole


def add_rows(index, rows: np.ndarray, first_id: int) -> None:
    """Add normalised `rows` with the row ids first_id, first_id + 1, ... (an HNSW index saved before HNSW had row
    ids numbers them itself: it never removes, so its count is the next id)."""
    if "HNSW" in type(index).__name__:
        if index.ntotal != first_id:
            raise ValueError(f"an HNSW index of {index.ntotal} rows cannot take row {first_id} next")
        index.add(rows)
    else:
        index.add_with_ids(rows, np.arange(first_id, first_id + len(rows), dtype=np.int64))


def add_vectors(index, source: Vectors, first_id: int) -> None:
    """Add every row of `source` (chunk by chunk), numbered from `first_id`."""
    for start, chunk in source.chunks():
        add_rows(index, chunk, first_id + start)


def remove_rows(index, rows: list[int]) -> int:
    """Take row ids out of the index; how many it held. ValueError for an index kind that cannot remove."""
    import faiss

    if _is_hnsw(index):
        raise ValueError("an HNSW index cannot remove rows (FAISS's HNSW graph has no removal): rebuild it without "
                         "them (simclr index with the features as they should be), or use --kind ivf or ivfpq")
    return int(index.remove_ids(faiss.IDSelectorBatch(np.asarray(rows, dtype=np.int64))))


def renumber_rows(index, new_ids: np.ndarray) -> None:
    """Give each row id `old` the id new_ids[old] (its row in features merged in another order). ValueError for an
    HNSW index saved before HNSW had row ids (its rows are numbered by position)."""
    import faiss

    new_ids = np.asarray(new_ids, dtype=np.int64)
    if isinstance(index, faiss.IndexIDMap):
        faiss.copy_array_to_vector(new_ids[faiss.vector_to_array(index.id_map)], index.id_map)
        return
    if _is_hnsw(index):
        raise ValueError("this HNSW index numbers its rows by position, so they cannot follow the merge: build it "
                         "again over the merged features (simclr index)")
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    for number in range(lists.nlist):
        if size := lists.list_size(number):
            ids = new_ids[faiss.rev_swig_ptr(lists.get_ids(number), size)]
            codes = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size).copy()
            lists.update_entries(number, 0, size, faiss.swig_ptr(ids), faiss.swig_ptr(codes))


def _is_hnsw(index) -> bool:
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return "HNSW" in type(inner).__name__


def _tune(index, plan: IndexPlan, queries: np.ndarray, exact: np.ndarray, target_recall: float,
          max_query_ms: float | None, rows: Vectors, progress: bool = False
          ) -> tuple[int | None, float, float, str]:
    """(setting, recall@10, single-query ms, note): the smallest nprobe/efSearch that reaches `target_recall`, or
    the best that stays within `max_query_ms`; the note says which of the two was not met, if one was. Searched
    as search() does, with the `rows`."""
    import faiss

    name = SEARCH_PARAMETERS.get(plan.kind)
    if name is None:
        query_ms = _query_ms(index, queries, rows)
        slow = max_query_ms is not None and query_ms > max_query_ms
        return None, 1.0, query_ms, (f"one query takes {query_ms:.2f} ms, over --max-query-ms {max_query_ms:g}: an "
                                     "exact index cannot trade recall for time (--kind hnsw or ivf can)"
                                     if slow else "")
    values = EF_SEARCH if name == "efSearch" else \
        sorted({min(plan.nlist, 2 ** power) for power in range(plan.nlist.bit_length() + 1)})
    parameters = faiss.ParameterSpace()
    best: tuple[int, float, float] | None = None
    limit = f"at the largest {name}"
    with progress_bar(total=len(values), desc=f"tuning {name}", disable=not progress) as bar:
        for value in values:
            parameters.set_index_parameter(index, name, value)
            _, found = search(index, queries, exact.shape[1], rows)
            recall, query_ms = recall_at_k(found, exact), _query_ms(index, queries, rows)
            bar.set_postfix_str(f"{name} {value}: recall@10 {recall:.3f}, {query_ms:.2f} ms", refresh=False)
            bar.update()
            if max_query_ms is not None and query_ms > max_query_ms and best is not None:
                limit = f"within --max-query-ms {max_query_ms:g}"
                break
            if best is not None and recall < best[1] + PLATEAU:  # compressed codes, not nprobe, cap the recall
                limit = f"where doubling {name} adds under {PLATEAU:g}" + (" (the compressed codes cap it)"
                                                                             if plan.kind == "ivfpq" else "")
                break
            best = (value, recall, query_ms)
            if recall >= target_recall:
                break
    value, recall, query_ms = best
    parameters.set_index_parameter(index, name, value)
    notes = []
    if recall < target_recall:
        notes.append(f"recall@10 {recall:.3f} is below the target {target_recall:g} {limit}; kept {name} {value}")
    if max_query_ms is not None and query_ms > max_query_ms:
        notes.append(f"one query takes {query_ms:.2f} ms, over --max-query-ms {max_query_ms:g}, even at {name} "
                     f"{value}")
    return value, recall, query_ms, "; ".join(notes)


def _query_ms(index, queries: np.ndarray, rows: Vectors) -> float:
    """Median milliseconds of one query searched alone."""
    times = []
    for query in queries[:TIMED_QUERIES]:
        started = time.perf_counter()
        search(index, query[None], 10, rows)
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k found in its approximate top-k."""
    hits = [len(set(a[a >= 0]) & set(e)) / len(e) for a, e in zip(approximate, exact, strict=True)]
    return float(np.mean(hits))


def search(index, queries: np.ndarray, k: int, exact: Vectors | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores [Q, k] and row ids [Q, k] (-1 where fewer than k rows exist) of normalised `queries`. With the
    indexed rows as they are (`exact`), a compressed index's k x RERANK best candidates are scored again exactly and
    the best k kept: its recall then depends on the candidates, not on how closely its codes score them."""
    if k < 1:
        raise ValueError(f"-k {k}: must be at least 1")
    queries, k = unit_rows(queries), min(k, index.ntotal)
    if exact is None or not is_compressed(index):
        return index.search(queries, k)
    _, candidates = index.search(queries, min(k * RERANK, index.ntotal))
    scores = np.full((len(queries), k), -np.finfo(np.float32).max, np.float32)  # as FAISS fills missing results
    rows = np.full((len(queries), k), -1, np.int64)
    for number, (query, found) in enumerate(zip(queries, candidates, strict=True)):
        found = found[found >= 0]
        cosines = exact.rows(found) @ query
        best = np.argsort(-cosines, kind="stable")[:k]
        scores[number, :len(best)], rows[number, :len(best)] = cosines[best], found[best]
    return scores, rows


def is_compressed(index) -> bool:
    """Whether the index scores rows from compressed codes (IVF-PQ), not from the vectors themselves."""
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index  # OPQ
    return isinstance(inner, faiss.IndexIVFPQ)
