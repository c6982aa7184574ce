"""The search service's latency and queries per second, in one run, against `simclr-search` processes:

(a) real features: Tiny ImageNet's ~100k photos (all 8 shards) embedded with the default model (cached in
    .cache/bench/ after the first run), with an IVF index (nprobe raised to recall@10 >= 0.95) and with an exact
    one (`flat`); (b) 1,000,000 synthetic 512-d vectors (clustered) with an IVF index (1,024 lists). For each:
    p50/p99 latency and QPS of row queries (JSON {"row": i}) and uploaded-photo queries (multipart: decode + embed +
    search) at concurrency 1 and 8, over real HTTP to `simclr search-server`'s service. Baseline in the same run:
    the same photo queries as `simclr-search PHOTO --json` processes, one query each.

    python bench/search_service.py --out bench/results/search_service.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from common import REPO, from_shared, machine, write_json

from simclr.data.images import find_images
from simclr.embed.encoder import EncoderSpec
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.runner import embed_images
from simclr.embed.sidecar import FeaturesHeader, listing_sha256
from simclr.embed.writer import FeatureWriter
from simclr.ports import free_port
from simclr.search.index import build_index
from simclr.search.server import SearchServer
from simclr.search.service import SearchService
from simclr.search.store import index_path, index_report, save_index

CACHE = REPO / ".cache" / "bench"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def real_features() -> tuple[Path, list[Path]]:
    """Tiny ImageNet (shards 0-7) embedded with the default model, and its photos."""
    photos_root = REPO / ".cache" / "tinyimagenet" / "all"
    from_shared("tinyimagenet/tinyimagenet.py", "folders", str(photos_root), "--shards", "0-7")
    photos = find_images(photos_root)
    features = CACHE / "tinyimagenet" / "feats.npy"
    if not features.is_file():
        say(f"embedding {len(photos)} Tiny ImageNet photos with the default model (once; cached in {features})")
        features.parent.mkdir(parents=True, exist_ok=True)
        embed_images([photos_root], features, OnnxEncoder(None))
    return features, photos


def ensure_index(features: Path, kind: str, nlist: int | None = None) -> None:
    """Build and save `features`' index of `kind` unless the saved one is of that kind already."""
    from simclr.embed.features import load_features

    vectors = load_features(features).vectors
    saved = index_report(index_path(features))
    if saved and saved["kind"] == kind and (nlist is None or saved["nlist"] == nlist):
        return
    started = time.perf_counter()
    index, report = build_index(vectors, kind, nlist=nlist)
    save_index(index, features, report)
    say(f"  {report.kind} index of {features}: nlist {report.nlist}, nprobe {report.nprobe}, recall@10 "
        f"{report.recall_at_10}, {time.perf_counter() - started:.0f} s")


def synthetic_features(count: int, dim: int = 512, clusters: int = 10_000) -> Path:
    """`count` clustered vectors with a sidecar naming the default model (rows have no files)."""
    features = CACHE / f"synthetic-{count}" / "feats.npy"
    if features.is_file():
        return features
    say(f"writing {count:,} synthetic {dim}-d vectors (once; cached in {features.parent})")
    features.parent.mkdir(parents=True, exist_ok=True)
    identity = OnnxEncoder(None).identity
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    paths = [f"synthetic/{row:07d}.jpg" for row in range(count)]
    header = FeaturesHeader(model=identity, model_source="", inputs=("synthetic",), cwd=str(features.parent),
                            normalized=False, images=count, listing_sha256=listing_sha256(paths))
    with FeatureWriter(features, dim, header, resume=False) as writer:
        for start in range(0, count, 50_000):
            rows = centres[rng.integers(0, clusters, min(50_000, count - start))]
            rows = rows + 0.5 * rng.standard_normal(rows.shape).astype(np.float32)
            batch = paths[start:start + len(rows)]
            writer.write(batch, [None] * len(batch), rows, [None] * len(batch))
        writer.finish()
    return features


def measure(url: str, request, count: int, concurrency: int) -> dict:
    """`count` requests from `concurrency` threads (one HTTP client each): p50/p99 ms and queries per second."""
    local = threading.local()
    clients: list[httpx.Client] = []
    latencies: list[float] = []

    def one(number: int) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=60)
            clients.append(local.client)
        started = time.perf_counter()
        answer = request(local.client, number)
        latencies.append(time.perf_counter() - started)
        answer.raise_for_status()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up
        latencies.clear()
        started = time.perf_counter()
        list(pool.map(one, range(count)))
        wall = time.perf_counter() - started
    for client in clients:
        client.close()
    return {"p50_ms": 1e3 * float(np.percentile(latencies, 50)), "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
            "qps": count / wall}


def process_baseline(features: Path, photos: list[Path], runs: int) -> dict:
    """`simclr-search PHOTO --index FEATURES --json`, one process per query: seconds per query."""
    seconds = []
    for photo in photos[:runs]:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "simclr", "search", str(photo), "--index", str(features), "-k", "10",
                        "--json"], check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return {"seconds_per_query": median, "qps": 1 / median, "runs": seconds}


def bench_collection(name: str, features: Path, photos: list[Path], args) -> dict:
    """Row and photo queries at concurrency 1 and 8 against the service on `features` (already indexed)."""
    rows = len(np.load(features, mmap_mode="r"))
    uploads = [photo.read_bytes() for photo in photos[:256]]
    rng = np.random.default_rng(1)
    query_rows = rng.integers(0, rows, args.queries)
    result: dict = {"collection": name, "rows": rows}
    with SearchServer(SearchService(features, EncoderSpec()), port=free_port()) as server:
        with httpx.Client(base_url=server.url) as client:
            result["info"] = client.get("/info").json()
        for concurrency in (1, 8):
            by_row = measure(server.url, lambda client, n: client.post("/search", json={"row": int(query_rows[n % len(
                query_rows)]), "k": 10}), args.queries, concurrency)
            by_photo = measure(server.url, lambda client, n: client.post("/search", files={"file": (
                "q.jpg", uploads[n % len(uploads)])}, data={"k": "10"}), args.queries, concurrency)
            result[f"concurrency_{concurrency}"] = {"row": by_row, "photo": by_photo}
            say(f"{name} c={concurrency}: row p50 {by_row['p50_ms']:.1f} ms ({by_row['qps']:.0f} QPS), photo p50 "
                f"{by_photo['p50_ms']:.1f} ms ({by_photo['qps']:.0f} QPS)")
    baseline = process_baseline(features, photos, args.process_runs)
    result["simclr_search_processes"] = baseline
    result["photo_qps_ratio_c1"] = result["concurrency_1"]["photo"]["qps"] / baseline["qps"]
    result["photo_qps_ratio_c8"] = result["concurrency_8"]["photo"]["qps"] / baseline["qps"]
    say(f"{name}: simclr-search processes {baseline['seconds_per_query']:.2f} s per query; the service's photo "
        f"queries {result['photo_qps_ratio_c1']:.0f}x (c=1), {result['photo_qps_ratio_c8']:.0f}x (c=8) its QPS")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=400, help="requests per measurement (default 400)")
    parser.add_argument("--process-runs", type=int, default=5, help="simclr-search processes timed (default 5)")
    parser.add_argument("--synthetic", type=int, default=1_000_000, help="synthetic vectors (default 1,000,000)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    features, photos = real_features()
    photos = [photos[i] for i in np.random.default_rng(0).permutation(len(photos))[:256]]
    results = []
    for kind in ("ivf", "flat"):
        ensure_index(features, kind)
        results.append(bench_collection(f"tinyimagenet ({kind} index)", features, photos, args))
    synthetic = synthetic_features(args.synthetic)
    ensure_index(synthetic, "ivf", nlist=1024)  # k-means over 1M vectors in ~1 min here
    results.append(bench_collection("synthetic (ivf index)", synthetic, photos, args))
    write_json({"benchmark": "search_service", "machine": machine(), "queries_per_measurement": args.queries,
                "k": 10, "collections": results}, args.out)


if __name__ == "__main__":
    main()
