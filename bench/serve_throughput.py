"""Serving throughput through the Triton that `simclr serve` starts (here: nvidia-pytriton's tritonserver, python
backend running ONNX Runtime), in one run, each part against a baseline measured in the same run:

1. images/s and p50/p99 request latency over HTTP and gRPC, concurrency 1, 4 and 16, dynamic batching on and off,
   against in-process ONNX Runtime on the same model and batches;
2. the bytes path (the client sends image files; NAME_preprocess decodes them on the server) against the uint8 path
   (the client decodes as simclr-embed does and sends pixels), over gRPC at concurrency 1, 4 and 16, on real photos
   of 256-1,100 px in six formats; plus the client's CPU seconds per image for each, overall and by file format;
3. the INT8 model of `simclr quantize` against its FP32 model, over gRPC at concurrency 16.

The model is a ResNet-18 (CIFAR stem, 32 px, full width) exported by `simclr export`; each request carries
--request-batch images.

    python bench/serve_throughput.py --out bench/results/serve_throughput.json
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from common import machine, reference_model, write_json

from simclr.data.images import load_image
from simclr.demo import gather_photos, upscaled_copies
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.triton_encoder import MAX_REQUEST_BYTES
from simclr.export.quantize import quantize_to_repository
from simclr.export.repository import ServingOptions, export_to_repository
from simclr.ports import free_port
from simclr.progress import significant
from simclr.server.launcher import ServerOptions, TritonServer

Request = Callable[[object, int], int]  # (this thread's client, request number) -> images it sent


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process: the server is a child, counted apart
    return usage.ru_utime + usage.ru_stime


def measure(module, url: str, request: Request, concurrency: int, requests: int) -> dict:
    """Send `requests` requests from `concurrency` threads (one client each): images/s, latencies, client CPU."""
    local = threading.local()
    clients = []
    latencies: list[float] = []

    def one_request(number: int) -> int:
        if not hasattr(local, "client"):
            local.client = module.InferenceServerClient(url)
            clients.append(local.client)
        started = time.perf_counter()
        images = request(local.client, number)
        latencies.append(time.perf_counter() - started)
        return images

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one_request, range(concurrency)))  # warm-up: connections and first batches
        latencies.clear()
        cpu, started = client_cpu_seconds(), time.perf_counter()
        images = sum(pool.map(one_request, range(requests)))
        wall, cpu = time.perf_counter() - started, client_cpu_seconds() - cpu
    for client in clients:  # an open channel keeps polling: it would count against the next measurement
        client.close()
    return {"images_per_second": images / wall, "p50_ms": 1e3 * float(np.percentile(latencies, 50)),
            "p99_ms": 1e3 * float(np.percentile(latencies, 99)), "client_cpu_ms_per_image": 1e3 * cpu / images}


def pixels_request(module, model: str, batch: np.ndarray) -> Request:
    def send(client, _: int) -> int:
        tensor = module.InferInput("image", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        client.infer(model, [tensor], outputs=[module.InferRequestedOutput("embedding")])
        return len(batch)
    return send


def photo_requests(photos: list[Path], per_request: int, send: str) -> Request:
    """Request n carries the next photos, `per_request` of them but no more than TritonEncoder puts in one request
    (MAX_REQUEST_BYTES), decoded here (uint8) or as files (bytes)."""
    def request(client, number: int) -> int:
        chosen, size = [], 0
        for i in range(per_request):
            path = photos[(number * per_request + i) % len(photos)]
            size += path.stat().st_size
            if chosen and size > MAX_REQUEST_BYTES:
                break
            chosen.append(path)
        if send == "bytes":
            files = np.array([path.read_bytes() for path in chosen], dtype=object).reshape(-1, 1)
            tensor = grpcclient.InferInput("image_bytes", list(files.shape), "BYTES")
            tensor.set_data_from_numpy(files)
            model = "dynamic_bytes"
        else:
            images = np.stack([load_image(path, 32) for path in chosen])
            tensor = grpcclient.InferInput("image", list(images.shape), "UINT8")
            tensor.set_data_from_numpy(images)
            model = "dynamic"
        client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("embedding")])
        return len(chosen)
    return request


def median_of(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]} | {
        "runs_images_per_second": [run["images_per_second"] for run in runs]}


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


def protocols_part(server: TritonServer, batch: np.ndarray, baseline: dict, args) -> list[dict]:
    results = []
    for module, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
        protocol = "grpc" if module is grpcclient else "http"
        for dynamic in (True, False):
            request = pixels_request(module, "dynamic" if dynamic else "plain", batch)
            for concurrency in args.concurrency:
                runs = [measure(module, url, request, concurrency, args.requests) for _ in range(args.repeats)]
                row = {"protocol": protocol, "dynamic_batching": dynamic, "concurrency": concurrency,
                       **median_of(runs)}
                row["ratio_to_in_process"] = row["images_per_second"] / baseline["images_per_second"]
                say(f"{protocol} dynamic={dynamic} c={concurrency}: {significant(row['images_per_second'])} images/s "
                    f"({row['ratio_to_in_process']:.2f}x in-process)")
                results.append(row)
    return results


def bytes_part(server: TritonServer, photos: list[Path], args) -> list[dict]:
    results = []
    for concurrency in args.concurrency:
        row: dict = {"concurrency": concurrency}
        for send in ("uint8", "bytes"):
            request = photo_requests(photos, args.request_batch, send)
            row[send] = median_of([measure(grpcclient, server.grpc_url, request, concurrency, args.requests)
                                   for _ in range(args.repeats)])
        row["throughput_ratio"] = row["bytes"]["images_per_second"] / row["uint8"]["images_per_second"]
        row["client_cpu_ratio"] = row["uint8"]["client_cpu_ms_per_image"] / row["bytes"]["client_cpu_ms_per_image"]
        say(f"grpc c={concurrency}: bytes {significant(row['bytes']['images_per_second'])} vs uint8 "
            f"{significant(row['uint8']['images_per_second'])} images/s ({row['throughput_ratio']:.2f}x), client CPU "
            f"{row['client_cpu_ratio']:.1f}x less")
        results.append(row)
    return results


def formats_part(server: TritonServer, photos: list[Path], args) -> list[dict]:
    """Client CPU per image of each path, one file format at a time (concurrency 1)."""
    results = []
    for suffix in sorted({path.suffix for path in photos}):
        chosen = [path for path in photos if path.suffix == suffix]
        row: dict = {"format": suffix[1:], "photos": len(chosen),
                     "mean_file_kb": float(np.mean([path.stat().st_size for path in chosen])) / 1024}
        for send in ("uint8", "bytes"):
            request = photo_requests(chosen, args.request_batch, send)
            row[send] = median_of([measure(grpcclient, server.grpc_url, request, 1, max(4, args.requests // 4))
                                   for _ in range(args.repeats)])
        row["client_cpu_ratio"] = row["uint8"]["client_cpu_ms_per_image"] / row["bytes"]["client_cpu_ms_per_image"]
        say(f"{row['format']} ({row['mean_file_kb']:.0f} KB): client CPU {row['uint8']['client_cpu_ms_per_image']:.2f}"
            f" vs {row['bytes']['client_cpu_ms_per_image']:.2f} ms/image ({row['client_cpu_ratio']:.1f}x less)")
        results.append(row)
    return results


def int8_part(server: TritonServer, batch: np.ndarray, args) -> dict:
    concurrency = max(args.concurrency)
    row: dict = {"protocol": "grpc", "concurrency": concurrency}
    for model in ("dynamic", "dynamic_int8"):
        request = pixels_request(grpcclient, model, batch)
        row[model] = median_of([measure(grpcclient, server.grpc_url, request, concurrency, args.requests)
                                for _ in range(args.repeats)])
    row["int8_ratio"] = row["dynamic_int8"]["images_per_second"] / row["dynamic"]["images_per_second"]
    say(f"grpc c={concurrency}: INT8 {significant(row['dynamic_int8']['images_per_second'])} vs FP32 "
        f"{significant(row['dynamic']['images_per_second'])} images/s ({row['int8_ratio']:.2f}x)")
    return row


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
        work = Path(scratch)
        photos = upscaled_copies(gather_photos(work / "sample"), work / "photos")
        say(f"{len(photos)} photos, shorter side 256-1,100 px, in JPEG, PNG, WebP, GIF, TIFF and BMP")
        repo = reference_model(work)
        export_to_repository(work / "run", repo, "plain", ServingOptions(max_batch_size=256, dynamic_batching=False),
                             bytes_model=None)
        quantized = quantize_to_repository(repo / "dynamic" / "1" / "model.onnx", work / "photos", images=64)
        local = OnnxEncoder(repo / "dynamic")
        baseline = median_of([measure_local(local, batch, args.requests) for _ in range(args.repeats)])
        say(f"in-process ONNX Runtime: {significant(baseline['images_per_second'])} images/s")
        options = ServerOptions(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                                log_file=work / "triton.log")
        with TritonServer(options) as server:
            protocols = protocols_part(server, batch, baseline, args)
            sends = bytes_part(server, photos, args)
            formats = formats_part(server, photos, args)
            int8 = int8_part(server, batch, args)
    write_json({"benchmark": "serve_throughput", "machine": machine(), "model": "resnet18 (CIFAR stem, 32 px, D=512)",
                "request_batch": args.request_batch, "requests_per_run": args.requests, "repeats": args.repeats,
                "server": "nvidia-pytriton tritonserver, python backend + ONNX Runtime (1 encoder instance; "
                          "NAME_preprocess: one instance per CPU core)",
                "in_process_onnxruntime": baseline, "triton": protocols,
                "bytes_vs_uint8": {"photos": len(photos), "protocol": "grpc", "rows": sends, "by_format": formats},
                "int8_vs_fp32": {**int8, "mean_cosine": quantized.mean_cosine}}, args.out)


if __name__ == "__main__":
    main()
