"""INT8 encoders for CPUs: ONNX Runtime static quantization (QDQ, per-channel weights), calibrated on images decoded
as simclr-embed decodes them, and refused unless it keeps the FP32 embeddings' direction on held-out images.

The recipe (measured on Tiny ImageNet photos, at 64 px and upscaled to 400 px JPEGs, with the default photo model;
see bench/quantize_calibration.py): batch norm folded into the convolutions first (ONNX Runtime's quantization
pre-processing; an export keeps it unfolded), so that each convolution's output is rounded once, not twice; the first
convolution and the global pooling left in float (the embedding itself is not rounded to 256 levels); activation
ranges the mean over calibration batches of each batch's min and max (CalibMovingAverage), which clips rare
outliers; asymmetric uint8 activations, symmetric per-channel int8 weights."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr.data.decoding import decode_many
from simclr.data.images import find_images
from simclr.export.layout import INPUT_NAME, OUTPUT_NAME, ModelMetadata, sha256_of
from simclr.export.onnx_export import ExportedModel, weights_as_fp32
from simclr.export.repository import RepositoryModel, ServingOptions, add_version
from simclr.progress import progress_bar

HELD_OUT = 128  # images kept out of calibration for the accuracy gate
MIN_HELD_OUT = 8  # fewer, and a mean cosine says little about the collection
MIN_CALIBRATION = 8
NEIGHBOURS = 10  # recall@10: how many of each held-out image's nearest neighbours INT8 keeps
FLOAT_OPS = ("GlobalAveragePool", "Flatten")  # left in float, with the first Conv: see the module docstring


class QuantizationError(ValueError):
    """The INT8 model would change the embeddings too much (or cannot be calibrated)."""


@dataclass(frozen=True)
class QuantizationReport:
    model: RepositoryModel
    calibration_images: int
    held_out_images: int
    mean_cosine: float  # INT8 vs FP32 embeddings of the held-out images
    min_cosine: float
    recall_at_10: float  # mean share of each held-out image's 10 nearest neighbours (among all) INT8 keeps


def quantize_to_repository(fp32_model: Path, calibration: Path, images: int = 512, min_mean_cosine: float = 0.99,
                           batch_size: int = 32, progress: bool = True) -> QuantizationReport:
    """Quantize an exported encoder (a model.onnx inside <repo>/<name>/<version>/) into <repo>/<name>_int8: the
    same input/output contract and metadata, plus precision int8 and the FP32 file's sha256. Calibrates on the
    first `images` decodable images of the `calibration` folder; the next up to 128 form the gate: the mean cosine
    similarity of INT8 to FP32 embeddings must reach `min_mean_cosine`, else QuantizationError with the figure and
    nothing is written. Also measures recall@10 (`neighbour_recall`: each held-out image's neighbours among all
    the decoded images). With `progress`, bars on stderr for decoding, calibrating and the gate."""
    import onnx

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
    pixels = sample_images(calibration, metadata.image_size, images + HELD_OUT, progress)
    held = min(HELD_OUT, max(MIN_HELD_OUT, len(pixels) - images))  # the gate's images, after the calibration's
    if len(pixels) < held + MIN_CALIBRATION:
        raise QuantizationError(f"--calibration {calibration}: {len(pixels)} readable images; at least "
                                f"{MIN_CALIBRATION + MIN_HELD_OUT} are needed ({MIN_CALIBRATION} to calibrate on, "
                                f"{MIN_HELD_OUT} held out for the accuracy gate)")
    calibrating = pixels[:min(images, len(pixels) - held)]
    pixels = pixels[:len(calibrating) + held]
    held_out = np.arange(len(calibrating), len(pixels))
    scores: dict[str, float] = {}

    def write(target: Path) -> ExportedModel:
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            plain = Path(scratch) / "fp32.onnx"
            onnx.save(weights_as_fp32(model), str(plain))
            quantize_onnx(plain, target, calibrating, batch_size, progress)
        quantized = onnx.load(str(target))
        int8 = dataclasses.replace(metadata, precision="int8", quantized_from=sha256_of(fp32_model))
        onnx.helper.set_model_props(quantized, int8.to_props())
        onnx.save(quantized, str(target))
        with progress_bar(total=2 * len(pixels), unit="img", desc="checking INT8 against FP32",
                          disable=not progress) as bar:
            reference = _embedded(fp32_model, pixels, batch_size, bar)
            quantized_embeddings = _embedded(target, pixels, batch_size, bar)
        cosine = _cosines(reference[held_out], quantized_embeddings[held_out])
        scores.update(mean=float(cosine.mean()), min=float(cosine.min()),
                      recall=neighbour_recall(reference, quantized_embeddings, held_out))
        if scores["mean"] < min_mean_cosine:
            raise QuantizationError(f"INT8 embeddings differ too much from FP32: mean cosine similarity "
                                    f"{scores['mean']:.4f} < {min_mean_cosine} on {len(held_out)} held-out images "
                                    f"(recall@{NEIGHBOURS} {scores['recall']:.3f}); nothing was written")
        # The gate is on direction (cosine), not on an absolute difference: no tolerance applies to the latter.
        return ExportedModel(target, int8, max_abs_diff=float(np.abs(reference - quantized_embeddings).max()),
                             tolerance=float("inf"))

    repo, name = fp32_model.parents[2], f"{fp32_model.parents[1].name}_int8"
    result = add_version(repo, name, ServingOptions(), write)
    return QuantizationReport(model=result, calibration_images=len(calibrating), held_out_images=len(held_out),
                              mean_cosine=scores["mean"], min_cosine=scores["min"], recall_at_10=scores["recall"])


def quantize_onnx(plain: Path, target: Path, calibrating: np.ndarray, batch_size: int = 32,
                  progress: bool = True) -> None:
    """Write the INT8 model of float32 ONNX `plain` (no FP16-stored weights) to `target` by this module's recipe,
    calibrated on uint8 images `calibrating` [N, S, S, 3], `batch_size` at a time; a scratch file beside `plain`."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folded = plain.with_name("folded.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's quantization logs its own steps at INFO and WARNING: noise here
    try:
        quant_pre_process(str(plain), str(folded), skip_symbolic_shape=True)  # folds batch norm, among others
        graph = onnx.load(str(folded)).graph
        first_conv = next(node.name for node in graph.node if node.op_type == "Conv")
        in_float = [first_conv, *(node.name for node in graph.node if node.op_type in FLOAT_OPS)]
        with progress_bar(total=len(calibrating), unit="img", desc="calibrating", disable=not progress) as bar:

            class Batches(CalibrationDataReader):
                def __init__(self) -> None:
                    self.batches = iter(calibrating[start:start + batch_size]
                                        for start in range(0, len(calibrating), batch_size))
                    self.handed_out = 0

                def get_next(self) -> dict | None:
                    bar.update(self.handed_out)  # asked for the next batch: the last one has run
                    batch = next(self.batches, None)
                    self.handed_out = 0 if batch is None else len(batch)
                    return None if batch is None else {INPUT_NAME: batch}

            quantize_static(str(folded), str(target), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=in_float, extra_options={"CalibMovingAverage": True})
    finally:
        root.setLevel(level)


def _embedded(model: Path, images: np.ndarray, batch_size: int, bar) -> np.ndarray:
    """float32 [N, D] embeddings of uint8 `images` through ONNX Runtime on the CPU, `bar` advanced per batch."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rows = []
    for start in range(0, len(images), batch_size):
        rows.append(session.run([OUTPUT_NAME], {INPUT_NAME: images[start:start + batch_size]})[0])
        bar.update(len(rows[-1]))
    return np.concatenate(rows)


def neighbour_recall(reference: np.ndarray, other: np.ndarray, queries: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean share of each query's k nearest neighbours by cosine among the rows of `reference` [N, D] (itself left
    out) that are also among its k nearest in `other` [N, D] (the same images embedded otherwise): 1.0 when a
    search over `other` finds what one over `reference` finds. k shrinks to N - 1 for fewer rows."""
    k = min(k, len(reference) - 1)

    def nearest(embeddings: np.ndarray) -> np.ndarray:
        unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        similarity = unit[queries] @ unit.T
        similarity[np.arange(len(queries)), queries] = -np.inf
        return np.argpartition(-similarity, k - 1, axis=1)[:, :k]

    found, expected = nearest(other), nearest(reference)
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, expected, strict=True)]))


def sample_images(folder: Path, size: int, count: int, progress: bool = True) -> np.ndarray:
    """Up to `count` readable images spread evenly over `folder` (so that every class folder is sampled), decoded
    as simclr-embed decodes them."""
    paths = find_images(Path(folder))
    paths = paths[::max(1, len(paths) // count)]
    decoded, start, found = [], 0, 0
    with progress_bar(total=min(count, len(paths)), unit="img", desc=f"decoding {Path(folder).name}",
                      disable=not progress) as bar:
        while start < len(paths) and found < count:
            chunk = paths[start:start + min(32, count - found)]
            images, _ = decode_many(chunk, size)
            decoded.append(images)
            start, found = start + len(chunk), found + len(images)
            bar.update(len(images))
    return np.concatenate(decoded) if decoded else np.zeros((0, size, size, 3), np.uint8)


def _cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1)
    return (reference * other).sum(axis=1) / np.maximum(norms, 1e-12)
