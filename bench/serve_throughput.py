"""Serving throughput: images/s through Triton (HTTP and gRPC; concurrency 1, 4, 16; dynamic batching on and off)
against in-process ONNX Runtime on the same model, in one run; p50/p99 request latency.

The model is a ResNet-18 (CIFAR stem, 32 px, full width) exported by `simclr export`; each request carries
--request-batch images. The server is the one `simclr serve` starts (here: nvidia-pytriton's tritonserver, python
backend running ONNX Runtime).

    python bench/serve_throughput.py --out bench/results/serve_throughput.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from common import machine, reference_model, write_json

from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.export.repository import ServingOptions, export_to_repository
from simclr.server.launcher import ServerOptions, TritonServer, free_port


def measure_triton(url: str, protocol: str, model: str, batch: np.ndarray, concurrency: int, requests: int) -> dict:
    """Send `requests` requests from `concurrency` threads (one client each); images/s and latencies."""
    module = grpcclient if protocol == "grpc" else httpclient
    local = threading.local()
    latencies: list[float] = []

    def one_request(_: int) -> None:
        if not hasattr(local, "client"):
            local.client = module.InferenceServerClient(url)
        tensor = module.InferInput("image", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        started = time.perf_counter()
        local.client.infer(model, [tensor], outputs=[module.InferRequestedOutput("embedding")])
        latencies.append(time.perf_counter() - started)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one_request, range(concurrency)))  # warm-up: connections and first batches
        latencies.clear()
        started = time.perf_counter()
        list(pool.map(one_request, range(requests)))
        wall = time.perf_counter() - started
    return {"images_per_second": requests * len(batch) / wall, "p50_ms": 1e3 * float(np.percentile(latencies, 50)),
            "p99_ms": 1e3 * float(np.percentile(latencies, 99))}


def measure_local(encoder: OnnxEncoder, batch: np.ndarray, requests: int) -> dict:
    encoder.embed(batch)
    latencies = []
    started = time.perf_counter()
    for _ in range(requests):
        begin = time.perf_counter()
        encoder.embed(batch)
        latencies.append(time.perf_counter() - begin)
    wall = time.perf_counter() - started
    return {"images_per_second": requests * len(batch) / wall, "p50_ms": 1e3 * float(np.percentile(latencies, 50)),
            "p99_ms": 1e3 * float(np.percentile(latencies, 99))}


def median_of(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]} | {
        "runs_images_per_second": [run["images_per_second"] for run in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--request-batch", type=int, default=16, help="images per request (default 16)")
    parser.add_argument("--requests", type=int, default=48, help="requests per timed run (default 48)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="default: 1 4 16")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    batch = np.random.default_rng(0).integers(0, 256, (args.request_batch, 32, 32, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="simclr-bench-") as scratch:
        repo = reference_model(Path(scratch))
        plain = ServingOptions(max_batch_size=256, dynamic_batching=False)
        export_to_repository(repo.parent / "run", repo, "plain", plain)
        local = OnnxEncoder(repo / "dynamic")
        baseline = median_of([measure_local(local, batch, args.requests) for _ in range(args.repeats)])
        print(f"in-process ONNX Runtime: {baseline['images_per_second']:.0f} images/s", file=sys.stderr)
        options = ServerOptions(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                                log_file=Path(scratch) / "triton.log")
        results = []
        with TritonServer(options) as server:
            for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
                for dynamic in (True, False):
                    for concurrency in args.concurrency:
                        runs = [measure_triton(url, protocol, "dynamic" if dynamic else "plain", batch, concurrency,
                                               args.requests) for _ in range(args.repeats)]
                        row = {"protocol": protocol, "dynamic_batching": dynamic, "concurrency": concurrency,
                               **median_of(runs)}
                        row["ratio_to_in_process"] = row["images_per_second"] / baseline["images_per_second"]
                        print(f"{protocol} dynamic={dynamic} c={concurrency}: {row['images_per_second']:.0f} "
                              f"images/s ({row['ratio_to_in_process']:.2f}x)", file=sys.stderr)
                        results.append(row)
    write_json({"benchmark": "serve_throughput", "machine": machine(), "model": "resnet18 (CIFAR stem, 32 px, D=512)",
                "request_batch": args.request_batch, "requests_per_run": args.requests, "repeats": args.repeats,
                "server": "nvidia-pytriton tritonserver, python backend + ONNX Runtime (1 instance)",
                "in_process_onnxruntime": baseline, "triton": results}, args.out)


if __name__ == "__main__":
    main()
