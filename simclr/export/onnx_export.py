"""Export encoder f (without head g) to ONNX: uint8 NHWC images in, float32 embeddings out, checked for parity."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simclr.atomic import default_mode
from simclr.export.layout import INPUT_NAME, OUTPUT_NAME, WEIGHT_PRECISIONS, ModelMetadata, sha256_of
from simclr.train.checkpoint import load_encoder, resolve_checkpoint
from simclr.train.config import TrainConfig
from simclr.train.model import ResNetEncoder, UInt8Encoder

OPSET = 17
FP32_TOLERANCE = 1e-4  # max abs difference, ONNX Runtime vs PyTorch
FP16_TOLERANCE = 2e-2  # max abs difference relative to the largest embedding value, for --fp16
FP16_WEIGHTS_TOLERANCE = 1e-3  # the same, for --weights fp16 (FP16 storage, FP32 compute)
SMALL_TENSOR = 1024  # initializers with fewer elements (norm parameters, biases, mean/std) stay FP32


class ExportError(ValueError):
    """The export could not produce a model that matches the checkpoint."""


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    metadata: ModelMetadata
    max_abs_diff: float
    tolerance: float


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


def export_onnx(checkpoint: Path, out_path: Path, fp16: bool = False, weights: str = "fp32",
                parity_batch: int = 8) -> ExportedModel:
    """Write encoder f of `checkpoint` to `out_path` as ONNX (opset 17, dynamic batch) and check parity.

    Batch norm stays a separate node (not folded into the convolutions; ONNX Runtime folds it at load), named as
    in the checkpoint, so that f can be read back from the file. `fp16` runs the encoder in float16; `weights`
    "fp16" stores the weights in float16 with Cast nodes, so that compute stays float32 on every runtime.
    Parity: ONNX Runtime against the PyTorch encoder on one seeded uint8 batch; max abs difference at most 1e-4
    (with fp16 compute: 2e-2, with fp16 weights: 1e-3 of the largest embedding value), else ExportError with the
    measured difference and nothing written at `out_path`.
    """
    if weights not in WEIGHT_PRECISIONS:
        raise ValueError(f"--weights {weights!r}: choose one of {', '.join(WEIGHT_PRECISIONS)}")
    checkpoint = resolve_checkpoint(checkpoint)
    encoder, config = load_encoder(checkpoint)
    metadata = model_metadata(config, encoder, sha256_of(checkpoint), fp16, weights)
    size = config.augment.image_size
    reference_model = UInt8Encoder(encoder)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (parity_batch, size, size, 3), dtype=np.uint8))
    with torch.no_grad():
        reference = reference_model(images).numpy()
    exported = UInt8Encoder(ResNetEncoder(config.model).eval(), half=fp16)
    exported.encoder.load_state_dict(encoder.state_dict())

    relative = FP16_TOLERANCE if fp16 else FP16_WEIGHTS_TOLERANCE if weights == "fp16" else None
    tolerance = relative * float(np.abs(reference).max()) if relative else FP32_TOLERANCE
    difference = write_checked_onnx(exported, images, {OUTPUT_NAME: reference}, Path(out_path),
                                    metadata.to_props(), tolerance, fp16_weights=weights == "fp16")
    return ExportedModel(Path(out_path), metadata, difference, tolerance)


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
