"""The Encoder protocol: uint8 images [N, H, W, 3] in, float32 embeddings [N, D] out, plus the model's identity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from simclr.export.layout import ModelMetadata


class EncoderError(RuntimeError):
    """An encoder that cannot run: server down, model missing, input that does not fit."""


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made an embedding: enough to refuse mixing features of different models."""

    name: str
    version: str
    sha256: str  # of the ONNX file; "" when the server does not say
    image_size: int
    embedding_dim: int

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "image_size": self.image_size,
                "embedding_dim": self.embedding_dim}


class Encoder(Protocol):
    identity: ModelIdentity
    metadata: ModelMetadata | None  # what the model records about itself; None for a baseline without one
    source: str  # where the model runs: an ONNX file path, or protocol://host:port of a Triton server

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] RGB (S = identity.image_size) -> float32 [N, D]."""
        ...


def takes_files(encoder: Encoder) -> bool:
    """Whether `encoder` embeds image files as they are (Triton's bytes path: `embed_files(paths)`)."""
    return getattr(encoder, "send", "uint8") == "bytes"


def same_model(recorded: ModelIdentity, identity: ModelIdentity) -> bool:
    """Whether `identity` is the model a features file records (by ONNX sha256 where both know it)."""
    if recorded.sha256 and identity.sha256:
        return recorded.sha256 == identity.sha256
    keys = ("name", "version", "image_size", "embedding_dim")
    return all(getattr(recorded, key) == getattr(identity, key) for key in keys)


def check_batch(images: np.ndarray, identity: ModelIdentity) -> np.ndarray:
    """The batch as a C-contiguous uint8 array, or EncoderError saying what shape the model expects."""
    images = np.asarray(images)
    size = identity.image_size
    if images.dtype != np.uint8:
        raise EncoderError(f"images are {images.dtype}; model {identity.name} takes uint8 RGB")
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise EncoderError(f"images have shape {images.shape}; model {identity.name} takes [N, {size}, {size}, 3]")
    return np.ascontiguousarray(images)


PROTOCOLS = ("http", "grpc")
SENDS = ("uint8", "bytes")  # what a Triton client sends: decoded images, or the files as they are
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder to run: `server` (host:port) and `model_name` for a model on Triton, else ONNX Runtime on
    `model` (a path; None: $SIMCLR_MODEL, else the default model of the source tree)."""

    model: str | None = None
    server: str | None = None
    protocol: str = "http"
    model_name: str | None = None
    model_version: str = ""
    send: str = "uint8"  # Triton: uint8 (decoded here) or bytes (files decoded by the server's NAME_preprocess)
    device: str = "auto"  # ONNX Runtime: auto (CUDA when onnxruntime-gpu has it), cpu or cuda
    threads: int | None = None  # ONNX Runtime threads (None: all cores)
    spin: bool = True  # ONNX Runtime threads spin between runs: best for back-to-back batches, not beside other work
    output: str = "embedding"  # the model output `embed` returns (a classifier also has logits, probabilities)

    def open(self) -> Encoder:
        if self.server:
            from simclr.embed.triton_encoder import TritonEncoder

            if not self.model_name:
                raise EncoderError("--server needs --model-name (the model's name in the Triton repository)")
            urls = [url.strip().removeprefix("http://").removeprefix("grpc://") for url in self.server.split(",")]
            if len(urls) > 1:
                from simclr.embed.triton_fleet import TritonFleet

                return TritonFleet(urls, self.model_name, self.model_version, self.protocol, send=self.send,
                                   output=self.output)
            return TritonEncoder(urls[0], self.model_name, self.model_version, self.protocol, send=self.send,
                                 output=self.output)
        if self.send != "uint8":
            raise EncoderError(f"--send {self.send} needs --server: without one, ONNX Runtime runs here and the "
                               "files are decoded here")
        from simclr.embed.onnx_encoder import OnnxEncoder

        return OnnxEncoder(Path(self.model) if self.model else None, device=self.device, threads=self.threads,
                           spin=self.spin, output=self.output)
