"""Choosing an index for a collection: its kind and parameters, so that building and holding it fits a memory budget.

Sizes are what FAISS holds in memory: flat 4D bytes a vector; IVF 4D + 8 (the row id) plus the centroids; IVF-PQ
its code bytes + 8 plus centroids, codebooks and (OPQ) a D x D rotation; HNSW 4D plus 2M neighbour links of 4 bytes.
`auto` takes, of exact (up to EXACT_UP_TO vectors), HNSW (up to HNSW_UP_TO), IVF, then IVF-PQ with ever smaller
codes, the first that fits (without a budget: the first).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
EXACT_UP_TO = 50_000  # `auto` builds an exact index up to this many vectors
MAX_LISTS = 4096  # k-means over more lists takes too long to train on a few cores for what it gains
MIN_LISTS = 64  # fewest lists a memory budget may leave an IVF index (each list is then long to scan)
TRAINING_ROWS_PER_LIST = 40  # FAISS warns below 39
PQ_TRAINING_ROWS = 10_000  # 8-bit codebooks: 256 centroids a sub-quantizer, 39 points each
CODE_BYTES = (128, 96, 64, 48, 32, 24, 16, 12, 8, 4)  # IVF-PQ code sizes `auto` tries, largest (best recall) first
HNSW_M = 32
HNSW_UP_TO = 1_000_000  # `auto` builds HNSW up to here (fastest queries at a given recall; minutes to build on 2 cores)
GROWTH = 1.25  # inverted lists grow by doubling: room for what is allocated but not yet filled
ADDING_BYTES = 32 << 20  # a chunk of rows as read and FAISS's temporaries while adding it (rotated, residuals)
TRAINING_FACTOR = 4.5  # k-means and OPQ hold copies of the training sample: peak over the sample, measured
SIZE_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?$", re.IGNORECASE)


@dataclass(frozen=True)
class IndexPlan:
    kind: str  # flat | ivf | ivfpq | hnsw
    nlist: int | None = None
    pq_bytes: int | None = None
    opq: bool = False
    hnsw_m: int | None = None
    index_bytes: int = 0  # estimated size of the index in memory
    training_bytes: int = 0  # estimated peak while training (the index is still empty then)

    @property
    def peak_bytes(self) -> int:
        """Estimated peak memory of building it, on top of the process's own."""
        return max(self.training_bytes, self.index_bytes + ADDING_BYTES)

    def describe(self) -> str:
        """FAISS's factory-like name: Flat, IVF1024,Flat, OPQ64,IVF1024,PQ64, HNSW32."""
        rotation = f"OPQ{self.pq_bytes}," if self.opq else ""
        return {"flat": "Flat", "ivf": f"IVF{self.nlist},Flat", "hnsw": f"HNSW{self.hnsw_m}",
                "ivfpq": f"{rotation}IVF{self.nlist},PQ{self.pq_bytes}"}[self.kind]


def parse_size(text: str) -> int:
    """'4G', '512M', '2.5GiB', '1000000' -> bytes (powers of 1024); ValueError names --memory-budget."""
    match = SIZE_PATTERN.fullmatch(text.strip())
    if not match:
        raise ValueError(f"--memory-budget {text}: give a size such as 2G, 512M or 1.5GiB")
    return int(float(match[1]) * 1024 ** " KMGT".index(match[2].upper() or " "))


def format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def default_nlist(count: int) -> int:
    """4 sqrt(N) lists, at most MAX_LISTS, and at least TRAINING_ROWS_PER_LIST vectors a list."""
    return max(1, min(int(4 * math.sqrt(count)), count // TRAINING_ROWS_PER_LIST, MAX_LISTS))


def training_rows(plan: IndexPlan, count: int) -> int:
    """Rows sampled to train the index (k-means of the lists, PQ codebooks)."""
    if plan.kind in ("flat", "hnsw"):
        return 0
    wanted = TRAINING_ROWS_PER_LIST * plan.nlist
    if plan.kind == "ivfpq":
        wanted = max(wanted, PQ_TRAINING_ROWS)
    return min(count, wanted)


def sized(plan: IndexPlan, count: int, dim: int) -> IndexPlan:
    """`plan` with its estimated index and working memory."""
    vectors = {"flat": 4 * dim, "ivf": 4 * dim + 8, "ivfpq": (plan.pq_bytes or 0) + 8,
               "hnsw": 4 * dim + 8 * (plan.hnsw_m or 0) + 16}[plan.kind]
    fixed = 4 * dim * (plan.nlist or 0)
    if plan.kind == "ivfpq":
        fixed += 4 * 256 * dim + (4 * dim * dim if plan.opq else 0)
    growth = GROWTH if plan.kind in ("ivf", "ivfpq", "hnsw") else 1.0
    training = TRAINING_FACTOR * 4 * dim * training_rows(plan, count)
    return IndexPlan(plan.kind, plan.nlist, plan.pq_bytes, plan.opq, plan.hnsw_m,
                     int(count * vectors * growth + fixed), int(training))


def pq_sizes(dim: int) -> list[int]:
    """The code sizes of CODE_BYTES that FAISS can use for `dim` (they divide it), largest first."""
    return [size for size in CODE_BYTES if size <= dim and dim % size == 0] or [1]


def plan_index(count: int, dim: int, kind: str = "auto", available: int | None = None, nlist: int | None = None,
               pq_bytes: int | None = None) -> IndexPlan:
    """The index to build for `count` vectors of `dim`: `kind`, or under `auto` the first of exact (small
    collections), IVF and IVF-PQ whose index and working memory fit in `available` bytes (None: no limit).
    ValueError names the option that cannot be met."""
    if kind not in KINDS:
        raise ValueError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
    if nlist is not None and not 1 <= nlist <= count:
        raise ValueError(f"--nlist {nlist}: must be 1 to the number of vectors ({count})")
    if pq_bytes is not None and (pq_bytes < 1 or dim % pq_bytes):
        raise ValueError(f"--pq-bytes {pq_bytes}: must divide the dimension ({dim})")
    # Fewer lists train on a smaller sample: where the sample is what does not fit, halve them (down to MIN_LISTS).
    lists = [nlist] if nlist else [default_nlist(count) >> halving for halving in range(8)
                                   if default_nlist(count) >> halving >= min(MIN_LISTS, default_nlist(count))]
    ivf = [IndexPlan("ivf", size) for size in lists]
    ivfpq = [IndexPlan("ivfpq", size, code, opq=4 * dim // code >= 16)
             for code in ([pq_bytes] if pq_bytes else pq_sizes(dim)) for size in lists]
    candidates = {"flat": [IndexPlan("flat")], "ivf": ivf, "ivfpq": ivfpq,
                  "hnsw": [IndexPlan("hnsw", hnsw_m=HNSW_M)]}.get(kind)
    if candidates is None:  # auto
        small, graph = count <= EXACT_UP_TO, count <= HNSW_UP_TO
        candidates = [*([IndexPlan("flat")] if small else []), *([IndexPlan("hnsw", hnsw_m=HNSW_M)] if graph else []),
                      *ivf, *ivfpq]
    plans = [sized(plan, count, dim) for plan in candidates]
    for plan in plans:
        if available is None or plan.peak_bytes <= available:
            return plan
    smallest = min(plans, key=lambda plan: (plan.peak_bytes, plan.index_bytes))
    raise ValueError(f"--memory-budget: {format_size(max(available, 0))} is left for the index beside this "
                     f"process's own memory, and the smallest {smallest.describe()} index of {count:,} x {dim} "
                     f"needs about {format_size(smallest.peak_bytes)} to build")
