"""Choosing an index for a collection: its kind and parameters, so that building and holding it fits a memory budget.

Sizes are what FAISS holds in memory: flat 4D bytes a vector; IVF 4D + 8 (the row id) plus the centroids; IVF-PQ
its code bytes + 8 plus centroids, codebooks and (OPQ) a D x D rotation; HNSW 4D plus 2M neighbour links of 4 bytes.
`auto` takes, of exact (up to EXACT_UP_TO vectors), HNSW (up to HNSW_UP_TO), IVF, then IVF-PQ with ever smaller
codes, the first that fits (without a budget: the first).

Every k-means is given the MIN_POINTS_PER_CENTROID points a centroid that FAISS asks for: IVF gets at most N / 40
lists, and IVF-PQ codebooks of fewer than 256 centroids (fewer bits a sub-quantizer, and no OPQ rotation) when the
collection is too small to train 256.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
EXACT_UP_TO = 50_000  # `auto` builds an exact index up to this many vectors
MAX_LISTS = 4096  # k-means over more lists takes too long to train on a few cores for what it gains
MIN_LISTS = 64  # fewest lists a memory budget may leave an IVF index (each list is then long to scan)
MIN_POINTS_PER_CENTROID = 39  # FAISS's k-means warns (one line a k-means) below this many training points a centroid
TRAINING_ROWS_PER_LIST = 40  # IVF lists get one more than FAISS asks for
PQ_BITS = 8  # a sub-quantizer's code: 256 centroids, when there are the rows to train them
PQ_TRAINING_ROWS = MIN_POINTS_PER_CENTROID << PQ_BITS  # 9,984: 8-bit codebooks train without a warning
APPROXIMATE_FROM = 10_000  # below this an exact query takes about a millisecond, and approximate kinds gain nothing
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
    pq_m: int | None = None  # IVF-PQ sub-quantizers (FAISS's M): the code bytes a vector at 8 bits each
    pq_bits: int = PQ_BITS  # bits of each sub-quantizer's code
    opq: bool = False
    hnsw_m: int | None = None
    note: str = ""  # why the kind asked for does not suit the collection, if it does not
    index_bytes: int = 0  # estimated size of the index in memory
    training_bytes: int = 0  # estimated peak while training (the index is still empty then)

    @property
    def peak_bytes(self) -> int:
        """Estimated peak memory of building it, on top of the process's own."""
        return max(self.training_bytes, self.index_bytes + ADDING_BYTES)

    @property
    def code_bytes(self) -> int | None:
        """IVF-PQ: the bytes of one vector's code."""
        return None if self.pq_m is None else (self.pq_m * self.pq_bits + 7) // 8

    def describe(self) -> str:
        """FAISS's factory name: Flat, IVF1024,Flat, OPQ64,IVF1024,PQ64, IVF43,PQ128x5 (5-bit codes), HNSW32."""
        rotation = f"OPQ{self.pq_m}," if self.opq else ""
        bits = "" if self.pq_bits == PQ_BITS else f"x{self.pq_bits}"
        return {"flat": "Flat", "ivf": f"IVF{self.nlist},Flat", "hnsw": f"HNSW{self.hnsw_m}",
                "ivfpq": f"{rotation}IVF{self.nlist},PQ{self.pq_m}{bits}"}[self.kind]


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


def pq_bits(rows: int) -> int:
    """Bits a sub-quantizer's code that `rows` training rows can train: 2^bits centroids of
    MIN_POINTS_PER_CENTROID points each, at most PQ_BITS (0 when not even two centroids can be)."""
    return min(PQ_BITS, (rows // MIN_POINTS_PER_CENTROID).bit_length() - 1)


def sized(plan: IndexPlan, count: int, dim: int) -> IndexPlan:
    """`plan` with its estimated index and working memory."""
    vectors = {"flat": 4 * dim, "ivf": 4 * dim + 8, "ivfpq": (plan.code_bytes or 0) + 8,
               "hnsw": 4 * dim + 8 * (plan.hnsw_m or 0) + 16}[plan.kind]
    fixed = 4 * dim * (plan.nlist or 0)
    if plan.kind == "ivfpq":
        fixed += 4 * (1 << plan.pq_bits) * dim + (4 * dim * dim if plan.opq else 0)
    growth = GROWTH if plan.kind in ("ivf", "ivfpq", "hnsw") else 1.0
    training = TRAINING_FACTOR * 4 * dim * training_rows(plan, count)
    return dataclasses.replace(plan, index_bytes=int(count * vectors * growth + fixed), training_bytes=int(training))


def _ivfpq(count: int, dim: int, nlist: int, pq_m: int) -> IndexPlan:
    """IVF-PQ with the codebooks its training sample can train; OPQ-rotated at 16x compression and more, when the
    8-bit codebooks can be trained (the rotation is fitted with them, and needs as many rows)."""
    bits = pq_bits(training_rows(IndexPlan("ivfpq", nlist), count))
    return IndexPlan("ivfpq", nlist, pq_m, bits, opq=bits == PQ_BITS and 4 * dim // pq_m >= 16)


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
    trainable = pq_bits(count) >= 1
    if kind == "ivfpq" and not trainable:
        raise ValueError(f"--kind ivfpq: {count} vectors are too few to train its codebooks (at least "
                         f"{2 * MIN_POINTS_PER_CENTROID}); use --kind flat")
    ivfpq = [_ivfpq(count, dim, size, code) for code in ([pq_bytes] if pq_bytes else pq_sizes(dim))
             for size in lists] if trainable else []
    candidates = {"flat": [IndexPlan("flat")], "ivf": ivf, "ivfpq": ivfpq,
                  "hnsw": [IndexPlan("hnsw", hnsw_m=HNSW_M)]}.get(kind)
    if candidates is None:  # auto
        small, graph = count <= EXACT_UP_TO, count <= HNSW_UP_TO
        candidates = [*([IndexPlan("flat")] if small else []), *([IndexPlan("hnsw", hnsw_m=HNSW_M)] if graph else []),
                      *ivf, *ivfpq]
    plans = [sized(plan, count, dim) for plan in candidates]
    for plan in plans:
        if available is None or plan.peak_bytes <= available:
            return plan if kind == "auto" else dataclasses.replace(plan, note=size_note(plan, count))
    smallest = min(plans, key=lambda plan: (plan.peak_bytes, plan.index_bytes))
    raise ValueError(f"--memory-budget: {format_size(max(available, 0))} is left for the index beside this "
                     f"process's own memory, and the smallest {smallest.describe()} index of {count:,} x {dim} "
                     f"needs about {format_size(smallest.peak_bytes)} to build")


def size_note(plan: IndexPlan, count: int) -> str:
    """One line when an approximate kind that was asked for does not suit a collection of `count` vectors (below
    APPROXIMATE_FROM, an exact search is about as fast and exact); else ""."""
    if plan.kind == "flat" or count >= APPROXIMATE_FROM:
        return ""
    codes = f"; its codebooks are cut to {plan.pq_bits} bits (256 centroids need {PQ_TRAINING_ROWS:,} vectors)" \
        if plan.kind == "ivfpq" and plan.pq_bits < PQ_BITS else ""
    return (f"--kind {plan.kind} does not suit {count:,} vectors: below {APPROXIMATE_FROM:,} an exact index "
            f"(--kind flat, what auto builds up to {EXACT_UP_TO:,}) finds every neighbour about as fast{codes}")
