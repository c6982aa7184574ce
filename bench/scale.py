"""Indexes at scale, in one run: real photo embeddings and millions of synthetic vectors.

Sets: `tin-100k` (Tiny ImageNet's photos embedded with the default model, 1,000 of them held out as queries),
`tin-200k` (the same plus the embeddings of every photo mirrored), `1m` and `5m` (512-d synthetic vectors from the
generator below, 1,000 more as queries). For each set, the baseline is exact search: a flat index (`simclr index
--kind flat`, in memory) up to 1M vectors, the rows streamed through FAISS from the page cache above (streaming also
gives the true top-10 of every query); each index is built by a fresh
`simclr index` process under `/usr/bin/time -v` (its peak RSS), then opened memory-mapped here and measured on the
held-out queries as simclr-search and the service search it (an IVF-PQ index's candidates scored again with the
rows of the features file): recall@10 against exact, single-query QPS (one query a call) and batched QPS (all 1,000
in one call), medians of 3 runs. Up to 1M vectors the indexes are exact, IVF and HNSW (what `auto` builds there); from
1M on, `auto` under a memory budget (2 GiB).

Synthetic generator (its parameters match the real set's statistics, printed beside them): a 64-d latent space
with a power-law spectrum (variance of dim i ~ i^-1.6), 3,000 cluster centres in it, points spread around their
centre at 0.6 of the spectrum, mapped into 512-d by a random orthonormal basis, plus a shared offset direction
(real embeddings sit in a cone) and isotropic noise.

    python bench/scale.py --out bench/results/scale.json [--sets tin-100k,tin-200k,1m,5m] [--budget 2G]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, machine, write_json

from simclr.data.decoding import decode_chunks
from simclr.embed.features import load_features
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.sidecar import FeaturesHeader, listing_sha256
from simclr.embed.writer import FeatureWriter
from simclr.search.index import recall_at_k, search
from simclr.search.store import load_index
from simclr.search.vectors import VectorFile, normalise_in_place, vector_source

CACHE = REPO / ".cache" / "bench"
SETS = ("tin-100k", "tin-200k", "1m", "5m")
QUERIES = 1000
HNSW_UP_TO = 1_000_000
IN_MEMORY_UP_TO = 1_000_000  # exact search's baseline is a flat index up to here, rows streamed from disk above


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def synthetic(count: int, seed: int) -> np.ndarray:
    """`count` rows of the generator in the docstring (the same space for every seed: rows differ)."""
    latent, clusters = 64, 3000
    space = np.random.default_rng(0)
    spectrum = (np.arange(1, latent + 1) ** -0.8).astype(np.float32)
    centres = (space.standard_normal((clusters, latent)) * spectrum).astype(np.float32)
    basis = np.linalg.qr(space.standard_normal((512, latent + 1)))[0].T.astype(np.float32)
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, clusters, count)] + \
        0.6 * spectrum * rng.standard_normal((count, latent)).astype(np.float32)
    return (1.8 * spectrum[0] * basis[0] + points @ basis[1:]
            + 0.02 * spectrum[0] * rng.standard_normal((count, 512)).astype(np.float32))


def write_bare(path: Path, count: int, seed: int) -> None:
    """A bare float32 .npy of `count` synthetic rows, written 100,000 rows at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "<f4", "fortran_order": False, "shape": (count, 512)})
        for start in range(0, count, 100_000):
            file.write(synthetic(min(100_000, count - start), seed * 1000 + start // 100_000).tobytes())
    partial.rename(path)


def write_features(path: Path, vectors: np.ndarray, paths: list[str], model) -> None:
    """feats.npy + sidecar of real rows (written by the real writer)."""
    header = FeaturesHeader(model=model, model_source="", inputs=("tinyimagenet",), cwd=str(REPO),
                            normalized=False, images=len(paths), listing_sha256=listing_sha256(paths))
    with FeatureWriter(path, vectors.shape[1], header, resume=False) as writer:
        for start in range(0, len(paths), 50_000):
            batch = paths[start:start + 50_000]
            writer.write(batch, [None] * len(batch), vectors[start:start + 50_000], [None] * len(batch))
        writer.finish()


def mirrored_embeddings(paths: list[str], out: Path) -> np.ndarray:
    """The default model's embeddings of every photo mirrored left-right (cached)."""
    if out.is_file():
        return np.load(out)
    encoder = OnnxEncoder(None)
    say(f"embedding {len(paths):,} mirrored photos (once; cached in {out})")
    chunks = [paths[start:start + 512] for start in range(0, len(paths), 512)]
    rows = []
    for images, errors in decode_chunks(chunks, encoder.identity.image_size):
        assert not any(errors), errors
        rows.append(encoder.embed(np.ascontiguousarray(images[:, :, ::-1])))
    np.save(out, np.concatenate(rows))
    return np.load(out)


def prepare(name: str) -> tuple[Path, np.ndarray]:
    """The set's features file and its held-out queries (made once, cached under .cache/bench/scale)."""
    folder = CACHE / "scale" / name
    features, queries = folder / "feats.npy", folder / "queries.npy"
    if features.is_file() and queries.is_file():
        return features, np.load(queries)
    folder.mkdir(parents=True, exist_ok=True)
    if name.startswith("tin"):
        source = CACHE / "tinyimagenet" / "feats.npy"
        if not source.is_file():
            sys.exit(f"bench: {source} is missing; run bench/search_service.py once (it embeds Tiny ImageNet)")
        real = load_features(source)
        vectors = np.asarray(real.vectors, dtype=np.float32)
        held_out = np.zeros(len(vectors), bool)
        held_out[np.random.default_rng(0).choice(len(vectors), QUERIES, replace=False)] = True
        kept = [path for path, out in zip(real.paths, held_out, strict=True) if not out]
        rows, paths = vectors[~held_out], kept
        if name == "tin-200k":
            mirrored = mirrored_embeddings(real.paths, CACHE / "tinyimagenet" / "mirrored.npy")[~held_out]
            rows, paths = np.concatenate([rows, mirrored]), kept + [f"{path}#mirrored" for path in kept]
        write_features(features, rows, paths, real.model)
        np.save(queries, vectors[held_out])
    else:
        count = {"1m": 1_000_000, "5m": 5_000_000}[name]
        say(f"writing {count:,} synthetic 512-d vectors (once; cached in {folder})")
        write_bare(features, count, seed=1)
        np.save(queries, synthetic(QUERIES, seed=999_999))
    return features, np.load(queries)


def exact(features: Path, queries: np.ndarray) -> tuple[np.ndarray, dict]:
    """True top-10 of every query (rows streamed in chunks), and exact search's QPS: batched, and for single
    queries (each streams every row)."""
    import faiss

    source = VectorFile(features)
    queries = normalise_in_place(queries.astype(np.float32))

    def top10(batch: np.ndarray) -> np.ndarray:
        heap = faiss.ResultHeap(len(batch), 10, keep_max=True)
        for start, chunk in source.chunks():
            scores, rows = faiss.knn(batch, chunk, min(10, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, rows + start)
        heap.finalize()
        return heap.I

    batched, truth = [], None
    for _ in range(3):
        started = time.perf_counter()
        truth = top10(queries)
        batched.append(len(queries) / (time.perf_counter() - started))
    single = []
    for query in queries[:5]:
        started = time.perf_counter()
        top10(query[None])
        single.append(1 / (time.perf_counter() - started))
    return truth, {"batched_qps": statistics.median(batched), "single_qps": statistics.median(single)}


def build(features: Path, out: Path, *options: str) -> dict:
    """`simclr index` in a fresh process under /usr/bin/time -v: its JSON report plus the peak RSS time measured."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "simclr", "index", str(features), "--out", str(out),
               "--json", *options]
    say("  " + " ".join(command[3:]))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"bench: simclr index failed: {result.stderr[-2000:]}")
    report = json.loads(result.stdout)
    peak = next(line for line in result.stderr.splitlines() if "Maximum resident set size" in line)
    report["time_v_peak_rss_bytes"] = int(peak.split(":")[1]) * 1024
    return report


def measure(index_file: Path, features: Path, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Recall@10 against exact, single-query and batched QPS of the saved index, opened memory-mapped, searched with
    its features' rows at hand."""
    index, _ = load_index(index_file)
    rows = vector_source([features])
    queries = normalise_in_place(queries.astype(np.float32))
    _, found = search(index, queries, 10, rows)
    single, batched = [], []
    for _ in range(3):
        started = time.perf_counter()
        for query in queries[:200]:
            search(index, query[None], 10, rows)
        single.append(200 / (time.perf_counter() - started))
        started = time.perf_counter()
        search(index, queries, 10, rows)
        batched.append(len(queries) / (time.perf_counter() - started))
    return {"recall_at_10": recall_at_k(found, truth), "single_qps": statistics.median(single),
            "batched_qps": statistics.median(batched)}


def statistics_of(features: Path) -> dict:
    """Mean cosine of the 1st and 10th neighbour of 500 rows among the first 100,000 (how spread the set is)."""
    import faiss

    rows = normalise_in_place(np.array(np.load(features, mmap_mode="r")[:100_000], dtype=np.float32))
    flat = faiss.IndexFlatIP(rows.shape[1])
    flat.add(rows)
    scores, _ = flat.search(rows[np.random.default_rng(0).choice(len(rows), 500, replace=False)], 11)
    return {"neighbour_1_cosine": float(scores[:, 1].mean()), "neighbour_10_cosine": float(scores[:, 10].mean())}


def run_set(name: str, budget: str) -> dict:
    features, queries = prepare(name)
    count = np.load(features, mmap_mode="r").shape[0]
    say(f"{name}: {count:,} vectors; exact search of {len(queries)} held-out queries")
    truth, exact_qps = exact(features, queries)
    result = {"vectors": count, "dim": 512, "spread": statistics_of(features), "exact": exact_qps, "indexes": {}}
    configs = {"flat": ("--kind", "flat"), "ivf": ("--kind", "ivf")} if count <= IN_MEMORY_UP_TO else {}
    if count <= HNSW_UP_TO:
        configs["hnsw (auto)"] = ("--kind", "hnsw")
    if count >= 1_000_000:
        configs[f"auto --memory-budget {budget}"] = ("--memory-budget", budget)
    for label, options in configs.items():
        out = features.parent / f"{label.split()[0]}{'-budget' if 'budget' in label else ''}.faiss"
        report = build(features, out, *options)
        measured = measure(out, features, queries, truth)
        baseline = result["indexes"].get("flat", {}).get("held_out", exact_qps)  # exact: in memory where it fits
        measured["single_speedup_vs_exact"] = measured["single_qps"] / baseline["single_qps"]
        result["indexes"][label] = {"build": report, "held_out": measured}
        say(f"  {label}: {report['description']}, built in {report['build_seconds']:.0f} s, peak RSS "
            f"{report['time_v_peak_rss_bytes'] / 2**20:.0f} MiB, {report['index_bytes'] / 2**20:.0f} MiB; recall@10 "
            f"{measured['recall_at_10']:.3f}, {measured['single_qps']:.0f} single QPS "
            f"({measured['single_speedup_vs_exact']:.0f}x exact), {measured['batched_qps']:.0f} batched QPS")
        out.unlink()
        Path(f"{out}.json").unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--budget", default="2G", help="--memory-budget for the sets of 1M vectors and more")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {}
    if args.out and args.out.is_file():  # sets measured before, in an earlier run, stay
        results = json.loads(args.out.read_text()).get("sets", {})
    for name in args.sets.split(","):
        if name not in SETS:
            sys.exit(f"bench: --sets {name}: choose from {', '.join(SETS)}")
        results[name] = run_set(name, args.budget)
    write_json({"machine": machine(), "sets": results}, args.out)


if __name__ == "__main__":
    main()
