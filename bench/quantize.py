"""INT8 against FP32 ONNX Runtime on this CPU: the default encoder quantized by `simclr quantize` (calibrated on
CIFAR-10 training images), images/s at batch 1, 16 and 256 on the same inputs, median of several runs, in one run;
with the CPU's name and whether it has VNNI or AMX.

    python bench/quantize.py --out bench/results/quantize.json
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, from_shared, machine, median_rate, write_json

from simclr.data.images import find_images, load_image
from simclr.embed.onnx_encoder import DEFAULT_MODEL, OnnxEncoder
from simclr.export.quantize import quantize_to_repository


def cpu_features() -> dict:
    with open("/proc/cpuinfo") as file:
        flags = next((line.split(":", 1)[1].split() for line in file if line.startswith("flags")), [])
    return {"avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags,
            "amx": any(flag.startswith("amx") for flag in flags)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--calibration-images", type=int, default=256, help="images to calibrate on (default 256)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    folders = REPO / ".cache" / "folders"
    from_shared("cifar10.py", "folders", str(folders), "--split", "train", "--per-class", "200")
    with tempfile.TemporaryDirectory(prefix="simclr-quantize-") as scratch:
        repo = Path(scratch) / "repo"
        name = DEFAULT_MODEL.name
        shutil.copytree(DEFAULT_MODEL, repo / name)
        started = time.perf_counter()
        report = quantize_to_repository(repo / name / "1" / "model.onnx", folders / "train", args.calibration_images)
        quantize_seconds = time.perf_counter() - started
        fp32, int8 = OnnxEncoder(repo / name), OnnxEncoder(repo / f"{name}_int8")
        size = fp32.identity.image_size
        images = np.stack([load_image(path, size) for path in find_images(folders / "train")[::4][:256]])
        rows = []
        for batch in (1, 16, 256):
            inputs = images[:batch]
            repeats = max(1, 256 // batch)

            def run(encoder, inputs=inputs, repeats=repeats) -> int:
                for _ in range(repeats):
                    encoder.embed(inputs)
                return repeats * len(inputs)

            run(fp32), run(int8)  # warm-up
            baseline, quantized = median_rate(lambda: run(fp32), args.repeats), median_rate(lambda: run(int8),
                                                                                           args.repeats)
            rows.append({"batch": batch, "fp32_images_per_s": baseline, "int8_images_per_s": quantized,
                         "speedup": quantized["median"] / baseline["median"]})
        sizes = {"fp32_bytes": fp32.path.stat().st_size, "int8_bytes": int8.path.stat().st_size}
    write_json({"benchmark": "quantize", "machine": {**machine(), **cpu_features()}, "quantize_seconds":
                quantize_seconds, "calibration_images": report.calibration_images,
                "mean_cosine_held_out": report.mean_cosine,
                "recall_at_10_held_out": report.recall_at_10, **sizes, "batches": rows}, args.out)


if __name__ == "__main__":
    main()
