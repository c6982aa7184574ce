"""The in-process encoder: an exported ONNX model run by ONNX Runtime (CUDA when available, else CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from simclr.embed.encoder import EncoderError, ModelIdentity, check_batch
from simclr.errors import first_line
from simclr.export.layout import INPUT_NAME, MODEL_FILE, OUTPUT_NAME, ModelMetadata, sha256_of, versions

MODEL_ENVIRONMENT = "SIMCLR_MODEL"
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "model_repository" / "simclr_resnet18_photo"


def resolve_model(model: Path | None) -> Path:
    """The ONNX file for --model PATH (a model directory, a version directory or a .onnx file), else
    $SIMCLR_MODEL, else the default model of the source tree; FileNotFoundError says how to get one."""
    if model is None and os.environ.get(MODEL_ENVIRONMENT):
        model = Path(os.environ[MODEL_ENVIRONMENT])
    if model is None:
        if not DEFAULT_MODEL.is_dir():
            raise FileNotFoundError("no model: pass --model PATH or set $SIMCLR_MODEL to an exported model "
                                    "(simclr train, then simclr export RUN_DIR --repo model_repository --name NAME)")
        model = DEFAULT_MODEL
    model = Path(model)
    if model.is_file():
        return model
    if (model / MODEL_FILE).is_file():
        return model / MODEL_FILE
    found = versions(model)
    if found:
        return model / str(found[-1]) / MODEL_FILE
    raise FileNotFoundError(f"--model {model}: not a .onnx file, a version directory or a model directory")


class OnnxEncoder:
    """Encoder over ONNX Runtime. `device`: auto (CUDA if onnxruntime-gpu has it), cpu or cuda. `spin=False` stops
    idle worker threads spinning, which would otherwise hold cores that other work in the process needs."""

    def __init__(self, model: Path | None = None, device: str = "auto", threads: int | None = None,
                 spin: bool = True, output: str = OUTPUT_NAME) -> None:
        import onnxruntime

        self.path = resolve_model(model).resolve()
        self.source = str(self.path)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = onnxruntime.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise EncoderError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu "
                               "in place of onnxruntime)")
        use_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            raise EncoderError(f"{self.path}: not a loadable ONNX model ({first_line(error)})") from None
        try:
            self.metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, self.path)
        except ValueError as error:
            raise EncoderError(str(error)) from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.classes: tuple[str, ...] = tuple(json.loads(props["classes"])) if "classes" in props else ()
        self.output = output
        dims = {tensor.name: tensor.shape[-1] for tensor in self.session.get_outputs()}
        if output not in dims:
            raise EncoderError(f"{self.path}: the model has no output {output!r} (outputs: {', '.join(dims)})"
                               + ("; a classifier is exported with simclr export RUN_DIR --classifier"
                                  if output != OUTPUT_NAME else ""))
        version = self.path.parent.name if self.path.parent.name.isdigit() else ""
        name = self.path.parent.parent.name if version else self.path.stem
        self.identity = ModelIdentity(name, version, sha256_of(self.path), self.metadata.image_size,
                                      self.metadata.embedding_dim if output == OUTPUT_NAME else int(dims[output]))

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = check_batch(images, self.identity)
        return self.session.run([self.output], {INPUT_NAME: images})[0]
