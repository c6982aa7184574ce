"""How close INT8 stays to FP32 on photos: the calibration recipe of `simclr quantize` (simclr.export.quantize)
against the plain one it replaced (MinMax ranges of every tensor, batch norm as exported, every node quantized),
both calibrated on the same 512 images of a folder and judged on the next 128, in one run: mean and least cosine
similarity to FP32 and recall@10 (each held-out image's 10 nearest neighbours among all 640, by INT8 and by FP32).

Without folders: Tiny ImageNet's shard 7 (8 photos of each class, never trained on), as they are (64 px) and
upscaled to 400 px JPEGs (closer to camera photos), both written once under .cache/quantize_calibration.

    python bench/quantize_calibration.py [FOLDER ...] [--model model_repository/simclr_resnet18_photo]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from common import REPO, from_shared, machine, write_json
from PIL import Image

from simclr.data.images import find_images
from simclr.embed.onnx_encoder import DEFAULT_MODEL, OnnxEncoder, resolve_model
from simclr.export.layout import INPUT_NAME
from simclr.export.onnx_export import run_onnx, weights_as_fp32
from simclr.export.quantize import HELD_OUT, neighbour_recall, quantize_onnx, sample_images

CALIBRATION = 512


def tiny_imagenet_folders(cache: Path) -> list[Path]:
    """Shard 7 of ../shared's Tiny ImageNet (8 per class) and its copies upscaled to 400 px JPEGs (quality 90)."""
    photos, upscaled = cache / "tinyimagenet64", cache / "tinyimagenet400"
    from_shared("tinyimagenet/tinyimagenet.py", "folders", str(photos), "--shards", "7", "--per-class", "8")
    for path in find_images(photos):
        copy = (upscaled / path.relative_to(photos)).with_suffix(".jpg")
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            Image.open(path).convert("RGB").resize((400, 400), Image.Resampling.BICUBIC).save(copy, quality=90)
    return [photos, upscaled]


def plain_recipe(plain: Path, target: Path, calibrating: np.ndarray, batch_size: int = 32) -> None:
    """The recipe before: static QDQ, per-channel int8 weights, uint8 activations, MinMax ranges, nothing else."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibrating[start:start + batch_size]
                                for start in range(0, len(calibrating), batch_size))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process, and per-channel batch norm weights
    quantize_static(str(plain), str(target), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def measure(model: Path, folder: Path, scratch: Path) -> list[dict]:
    """Both recipes on `folder`: one row each."""
    import onnx

    pixels = sample_images(folder, OnnxEncoder(model).identity.image_size, CALIBRATION + HELD_OUT)
    held_out = np.arange(CALIBRATION, len(pixels))
    plain = scratch / "fp32.onnx"
    onnx.save(weights_as_fp32(onnx.load(str(model))), str(plain))
    reference = run_onnx(model, pixels)
    rows = []
    for recipe, quantize in (("plain (before)", plain_recipe), ("simclr quantize", quantize_onnx)):
        target = scratch / "int8.onnx"
        quantize(plain, target, pixels[:CALIBRATION])
        quantized = run_onnx(target, pixels)
        a, b = reference[held_out], quantized[held_out]
        cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        rows.append({"folder": str(folder), "recipe": recipe, "mean_cosine": float(cosine.mean()),
                     "min_cosine": float(cosine.min()), "recall_at_10": neighbour_recall(reference, quantized,
                                                                                         held_out)})
        print(f"{folder.name}, {recipe}: mean cosine {cosine.mean():.5f} (min {cosine.min():.4f}), recall@10 "
              f"{rows[-1]['recall_at_10']:.4f}", flush=True)
    before, after = rows
    after["error_ratio"] = (1 - after["mean_cosine"]) / (1 - before["mean_cosine"])  # of 1 - mean cosine
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="photo folders (default: Tiny ImageNet, see above)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the FP32 encoder (default: the default)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    folders = args.folders or tiny_imagenet_folders(REPO / ".cache" / "quantize_calibration")
    model = resolve_model(args.model)
    with tempfile.TemporaryDirectory(prefix="simclr-calibration-") as scratch:
        rows = [row for folder in folders for row in measure(model, folder, Path(scratch))]
    write_json({"benchmark": "quantize_calibration", "machine": machine(), "model": str(model), "rows": rows},
               args.out)


if __name__ == "__main__":
    main()
