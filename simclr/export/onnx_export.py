"""Export encoder f (without head g) to ONNX: uint8 NHWC images in, float32 embeddings out, checked for parity."""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simclr.atomic import default_mode
from simclr.export.layout import (
    CONFIG_FILE,
    INPUT_NAME,
    MODEL_FILE,
    OUTPUT_NAME,
    WEIGHT_PRECISIONS,
    ModelMetadata,
)
from simclr.finetune.onnx_weights import read_onnx_encoder
from simclr.train.checkpoint import checkpoint_sha256, load_encoder, resolve_checkpoint
from simclr.train.config import ModelConfig, TrainConfig
from simclr.train.model import ResNetEncoder, UInt8Encoder

OPSET = 17
FP32_TOLERANCE = 1e-4  # max abs difference, ONNX Runtime vs PyTorch
FP16_TOLERANCE = 2e-2  # max abs difference relative to the largest embedding value, for --fp16
FP16_WEIGHTS_TOLERANCE = 1e-3  # the same, for --weights fp16 (FP16 storage, FP32 compute)
SMALL_TENSOR = 1024  # initializers with fewer elements (norm parameters, biases, mean/std) stay FP32
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024  # --image-size: the parity check runs a batch at that size on the CPU


class ExportError(ValueError):
    """The export could not produce a model that matches its source (a checkpoint or an exported model)."""


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    metadata: ModelMetadata
    max_abs_diff: float
    tolerance: float


@dataclass(frozen=True)
class ExportSource:
    """An encoder f to export, with what its exported model will record (precision and input size are set at
    export)."""

    encoder: ResNetEncoder  # eval mode
    model_config: ModelConfig
    metadata: ModelMetadata


def model_metadata(config: TrainConfig, encoder: ResNetEncoder, checkpoint_sha256: str, fp16: bool,
                   weights: str = "fp32") -> ModelMetadata:
    """What a user of the exported model needs to know (ONNX metadata_props, Triton parameters)."""
    recipe = {"data": config.data, "preset": config.preset, "epochs": config.epochs, "batch_size": config.batch_size,
              "temperature": config.temperature, "optimizer": config.optim.optimizer, "base_lr": config.optim.base_lr,
              "weight_decay": config.optim.weight_decay, "color_strength": config.augment.color_strength,
              "blur_p": config.augment.blur_p, "head_out": config.model.head_out, "seed": config.seed}
    return ModelMetadata(image_size=config.augment.image_size, embedding_dim=encoder.feature_dim,
                         architecture=config.model.arch, width=config.model.width, stem=config.model.stem,
                         mean=config.model.mean, std=config.model.std, precision="fp16" if fp16 else "fp32",
                         weights=weights, recipe=recipe, checkpoint_sha256=checkpoint_sha256)


def is_exported_model(path: Path) -> bool:
    """Whether `path` names an exported model (a .onnx file, a version directory or a model directory) rather
    than a training checkpoint or run directory."""
    path = Path(path)
    return path.suffix == ".onnx" or (path / MODEL_FILE).is_file() or (path / CONFIG_FILE).is_file()


def checkpoint_source(checkpoint: Path) -> ExportSource:
    """f of a training checkpoint (or run directory), recorded as trained."""
    checkpoint = resolve_checkpoint(checkpoint)
    encoder, config = load_encoder(checkpoint)
    return ExportSource(encoder.eval(), config.model,
                        model_metadata(config, encoder, checkpoint_sha256(checkpoint), False))


def exported_model_source(model: Path, parity_batch: int = 8) -> ExportSource:
    """f read back from an exported model, keeping its metadata (training size and recipe) and recording which
    file it came from. The read-back f is first checked against ONNX Runtime on the source at its own input size,
    so that a re-export can only differ from its source by the input size and precision asked for."""
    read = read_onnx_encoder(model)
    size = read.metadata.image_size
    images = _parity_images(parity_batch, size)
    expected = run_onnx(read.path, images.numpy())
    with torch.no_grad():
        actual = UInt8Encoder(read.encoder)(images).numpy()
    tolerance = _tolerance(read.metadata.precision == "fp16", read.metadata.weights, expected)
    difference = float(np.abs(actual - expected).max())
    if not difference <= tolerance:
        raise ExportError(f"{read.path}: the encoder read back from it differs from ONNX Runtime by "
                          f"{difference:.3g} at {size} px (max abs; tolerance {tolerance:.3g}); cannot re-export it")
    metadata = dataclasses.replace(read.metadata, exported_from=read.sha256)
    return ExportSource(read.encoder, read.model_config, metadata)


def export_onnx(source: Path, out_path: Path, fp16: bool = False, weights: str = "fp32", parity_batch: int = 8,
                image_size: int | None = None) -> ExportedModel:
    """Write encoder f of `source` (a training checkpoint or run directory, or an exported model: a .onnx file,
    version or model directory) to `out_path` as ONNX, `image_size` pixels square (default: the checkpoint's
    training size, or the exported model's input size); see `export_encoder`."""
    check_export_options(weights, image_size)
    loaded = exported_model_source(source, parity_batch) if is_exported_model(source) else checkpoint_source(source)
    return export_encoder(loaded, out_path, fp16=fp16, weights=weights, parity_batch=parity_batch,
                          image_size=image_size)


def check_export_options(weights: str, image_size: int | None) -> None:
    """ValueError naming the option when `weights` or `image_size` cannot be exported."""
    if weights not in WEIGHT_PRECISIONS:
        raise ValueError(f"--weights {weights!r}: choose one of {', '.join(WEIGHT_PRECISIONS)}")
    if image_size is not None and not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"--image-size {image_size}: choose {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels (the "
                         "side of the square input)")


def export_encoder(source: ExportSource, out_path: Path, fp16: bool = False, weights: str = "fp32",
                   parity_batch: int = 8, image_size: int | None = None) -> ExportedModel:
    """Write `source.encoder` to `out_path` as ONNX (opset 17, dynamic batch, H = W = `image_size`, default the
    source's) with the source's metadata, image_size set to the new size (train_image_size keeps the training
    size), and check parity at that size.

    The encoder is convolutional with global average pooling, so the same weights run at any input size.
    Batch norm stays a separate node (not folded into the convolutions; ONNX Runtime folds it at load), named as
    in the checkpoint, so that f can be read back from the file. `fp16` runs the encoder in float16; `weights`
    "fp16" stores the weights in float16 with Cast nodes, so that compute stays float32 on every runtime.
    Parity: ONNX Runtime against the PyTorch encoder on one seeded uint8 batch; max abs difference at most 1e-4
    (with fp16 compute: 2e-2, with fp16 weights: 1e-3 of the largest embedding value), else ExportError with the
    measured difference and nothing written at `out_path`.
    """
    check_export_options(weights, image_size)
    size = image_size or source.metadata.image_size
    metadata = dataclasses.replace(source.metadata, image_size=size, precision="fp16" if fp16 else "fp32",
                                   weights=weights)
    images = _parity_images(parity_batch, size)
    with torch.no_grad():
        reference = UInt8Encoder(source.encoder.eval())(images).numpy()
    exported = UInt8Encoder(ResNetEncoder(source.model_config).eval(), half=fp16)
    exported.encoder.load_state_dict(source.encoder.state_dict())
    tolerance = _tolerance(fp16, weights, reference)
    difference = write_checked_onnx(exported, images, {OUTPUT_NAME: reference}, Path(out_path),
                                    metadata.to_props(), tolerance, fp16_weights=weights == "fp16")
    return ExportedModel(Path(out_path), metadata, difference, tolerance)


def _parity_images(batch: int, size: int) -> torch.Tensor:
    """The seeded uint8 batch [batch, size, size, 3] that parity is checked on."""
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))


def _tolerance(fp16: bool, weights: str, reference: np.ndarray) -> float:
    """Largest allowed max abs difference from `reference` for this compute and weight precision."""
    relative = FP16_TOLERANCE if fp16 else FP16_WEIGHTS_TOLERANCE if weights == "fp16" else None
    return relative * float(np.abs(reference).max()) if relative else FP32_TOLERANCE


def write_checked_onnx(module: torch.nn.Module, images: torch.Tensor, references: dict[str, np.ndarray],
                       out_path: Path, props: dict[str, str], tolerance: float, fp16_weights: bool = False) -> float:
    """Export `module` (uint8 images -> the outputs named by `references`, in that order) to `out_path` with
    `props` as metadata, after checking ONNX Runtime's outputs on `images` against `references`: the largest
    absolute difference (returned) must be at most `tolerance`, else ExportError and nothing is written."""
    import onnx

    with tempfile.TemporaryDirectory(dir=out_path.parent) as scratch:
        draft = Path(scratch) / "model.onnx"
        names = list(references)
        with warnings.catch_warnings():
            # The TorchScript exporter is the documented choice here (DESIGN.md); its deprecation notice is noise,
            # and so is its advice against constant folding in PRESERVE mode: the model is in eval mode.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", "It is recommended that constant folding be turned off")
            torch.onnx.export(module, (images,), str(draft), input_names=[INPUT_NAME], output_names=names,
                              opset_version=OPSET, dynamo=False,
                              training=torch.onnx.TrainingMode.PRESERVE,  # keeps batch norm unfolded
                              dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *names]})
        model = onnx.load(str(draft))
        if fp16_weights:
            model = store_weights_fp16(model)
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(draft))
        actual = run_onnx(draft, images.numpy(), names)
        difference = max(float(np.abs(actual[name] - reference).max()) for name, reference in references.items())
        if not difference <= tolerance:
            raise ExportError(f"parity check failed: ONNX Runtime differs from PyTorch by {difference:.3g} "
                              f"(max abs; tolerance {tolerance:.3g}); nothing was written")
        draft.chmod(default_mode())
        draft.replace(out_path)
    return difference


def store_weights_fp16(model):
    """A copy of an ONNX model whose float32 weights (initializers of at least 1,024 values) are stored as float16,
    each read through a Cast back to float32: half the file, the same float32 compute on every runtime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    casts = []
    for initializer in graph.initializer:
        if initializer.data_type != TensorProto.FLOAT or np.prod(initializer.dims) < SMALL_TENSOR:
            continue
        name = initializer.name
        half = numpy_helper.from_array(numpy_helper.to_array(initializer).astype(np.float16), f"{name}.fp16")
        initializer.CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT, name=f"{name}.cast"))
    nodes = casts + list(graph.node)  # the casts come first, so the graph stays in topological order
    del graph.node[:]
    graph.node.extend(nodes)
    return converted


def weights_as_fp32(model):
    """A copy of an ONNX model with the FP16-stored weights of `store_weights_fp16` back in float32 and their Cast
    nodes removed (what quantization tools expect)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    halves = {init.name: init for init in graph.initializer if init.data_type == TensorProto.FLOAT16}
    casts = [node for node in graph.node if node.op_type == "Cast" and node.input[0] in halves]
    restored = [numpy_helper.from_array(numpy_helper.to_array(halves[cast.input[0]]).astype(np.float32),
                                        cast.output[0]) for cast in casts]
    kept_initializers = [init for init in graph.initializer if init.name not in {c.input[0] for c in casts}]
    kept_nodes = [node for node in graph.node if node not in casts]
    del graph.initializer[:], graph.node[:]
    graph.initializer.extend([*kept_initializers, *restored])
    graph.node.extend(kept_nodes)
    return converted


def run_onnx(path: Path, images: np.ndarray, outputs: list[str] | None = None):
    """Embeddings of a uint8 batch through ONNX Runtime on the CPU; with `outputs`, {name: array} of those."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    arrays = session.run(outputs or [OUTPUT_NAME], {INPUT_NAME: images})
    return dict(zip(outputs, arrays, strict=True)) if outputs else arrays[0]
