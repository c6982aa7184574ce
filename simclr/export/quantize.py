"""INT8 encoders for CPUs: ONNX Runtime static quantization (QDQ, per-channel weights), calibrated on images decoded
as simclr-embed decodes them, and refused unless it keeps the FP32 embeddings' direction on held-out images."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr.data.decoding import decode_many
from simclr.data.images import find_images
from simclr.export.layout import INPUT_NAME, ModelMetadata, sha256_of
from simclr.export.onnx_export import ExportedModel, run_onnx, weights_as_fp32
from simclr.export.repository import RepositoryModel, ServingOptions, add_version

log = logging.getLogger("simclr")
HELD_OUT = 128  # images kept out of calibration for the accuracy gate
MIN_HELD_OUT = 8  # fewer, and a mean cosine says little about the collection
MIN_CALIBRATION = 8


class QuantizationError(ValueError):
    """The INT8 model would change the embeddings too much (or cannot be calibrated)."""


@dataclass(frozen=True)
class QuantizationReport:
    model: RepositoryModel
    calibration_images: int
    held_out_images: int
    mean_cosine: float  # INT8 vs FP32 embeddings of the held-out images
    min_cosine: float


def quantize_to_repository(fp32_model: Path, calibration: Path, images: int = 512, min_mean_cosine: float = 0.99,
                           batch_size: int = 32) -> QuantizationReport:
    """Quantize an exported encoder (a model.onnx inside <repo>/<name>/<version>/) into <repo>/<name>_int8: the
    same input/output contract and metadata, plus precision int8 and the FP32 file's sha256. Calibrates on the
    first `images` decodable images of the `calibration` folder; the next up to 128 form the gate: the mean cosine
    similarity of INT8 to FP32 embeddings must reach `min_mean_cosine`, else QuantizationError with the figure and
    nothing is written."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32_model = Path(fp32_model)
    if fp32_model.name != "model.onnx" or not fp32_model.parent.name.isdigit() or len(fp32_model.parents) < 3:
        raise QuantizationError(f"{fp32_model}: not a model of a repository (REPO/NAME/VERSION/model.onnx, where "
                                "NAME_int8 is written beside NAME); `simclr export RUN --repo REPO` writes one")
    try:
        model = onnx.load(str(fp32_model))
    except Exception as error:  # protobuf's DecodeError and kin: the file is not ONNX
        raise QuantizationError(f"{fp32_model}: not an ONNX model ({type(error).__name__})") from None
    metadata = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, fp32_model)
    if metadata.precision != "fp32":
        raise QuantizationError(f"{fp32_model}: a {metadata.precision} model; quantize the FP32 export")
    pixels = _decoded(calibration, metadata.image_size, images + HELD_OUT)
    held = min(HELD_OUT, max(MIN_HELD_OUT, len(pixels) - images))  # the gate's images, after the calibration's
    if len(pixels) < held + MIN_CALIBRATION:
        raise QuantizationError(f"--calibration {calibration}: {len(pixels)} readable images; at least "
                                f"{MIN_CALIBRATION + MIN_HELD_OUT} are needed ({MIN_CALIBRATION} to calibrate on, "
                                f"{MIN_HELD_OUT} held out for the accuracy gate)")
    calibrating = pixels[:min(images, len(pixels) - held)]
    held_out = pixels[len(calibrating):][:held]

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibrating[start:start + batch_size]
                                for start in range(0, len(calibrating), batch_size))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    scores: dict[str, float] = {}

    def write(target: Path) -> ExportedModel:
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            plain = Path(scratch) / "fp32.onnx"
            onnx.save(weights_as_fp32(model), str(plain))
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # ORT's advice to pre-process is noise here: the graph is already plain
            try:
                quantize_static(str(plain), str(target), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            finally:
                root.setLevel(level)
        quantized = onnx.load(str(target))
        int8 = dataclasses.replace(metadata, precision="int8", quantized_from=sha256_of(fp32_model))
        onnx.helper.set_model_props(quantized, int8.to_props())
        onnx.save(quantized, str(target))
        reference, quantized_embeddings = run_onnx(fp32_model, held_out), run_onnx(target, held_out)
        cosine = _cosines(reference, quantized_embeddings)
        scores.update(mean=float(cosine.mean()), min=float(cosine.min()))
        if scores["mean"] < min_mean_cosine:
            raise QuantizationError(f"INT8 embeddings differ too much from FP32: mean cosine similarity "
                                    f"{scores['mean']:.4f} < {min_mean_cosine} on {len(held_out)} held-out images; "
                                    "nothing was written")
        # The gate is on direction (cosine), not on an absolute difference: no tolerance applies to the latter.
        return ExportedModel(target, int8, max_abs_diff=float(np.abs(reference - quantized_embeddings).max()),
                             tolerance=float("inf"))

    repo, name = fp32_model.parents[2], f"{fp32_model.parents[1].name}_int8"
    result = add_version(repo, name, ServingOptions(), write)
    return QuantizationReport(model=result, calibration_images=len(calibrating), held_out_images=len(held_out),
                              mean_cosine=scores["mean"], min_cosine=scores["min"])


def _decoded(folder: Path, size: int, count: int) -> np.ndarray:
    """Up to `count` readable images spread evenly over `folder` (so that every class folder is sampled), decoded
    as simclr-embed decodes them."""
    paths = find_images(Path(folder))
    paths = paths[::max(1, len(paths) // count)]
    decoded, start = [], 0
    while start < len(paths) and sum(len(d) for d in decoded) < count:
        images, _ = decode_many(paths[start:start + 256], size)
        decoded.append(images)
        start += 256
    return np.concatenate(decoded)[:count] if decoded else np.zeros((0, size, size, 3), np.uint8)


def _cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1)
    return (reference * other).sum(axis=1) / np.maximum(norms, 1e-12)
