"""The names and metadata the exported model and the model repository agree on (no heavy imports: clients use them
too)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WEIGHT_PRECISIONS = ("fp32", "fp16")  # how an exported model stores its weights
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"  # a classifier's class names, one a line (config.pbtxt label_filename)


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported encoder records about itself: ONNX metadata_props, mirrored as config.pbtxt parameters."""

    image_size: int
    embedding_dim: int
    architecture: str
    width: float
    stem: str  # cifar, small or imagenet
    mean: tuple[float, ...]
    std: tuple[float, ...]
    precision: str = "fp32"  # compute: fp32, fp16 or int8
    weights: str = "fp32"  # storage: fp32 or fp16 (cast to float32 in the graph)
    recipe: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_sha256: str = ""
    quantized_from: str = ""  # an INT8 model: the sha256 of the FP32 model.onnx it was quantized from
    # The input size it was trained at; 0 (and files from before this field): image_size. A re-export at another
    # input size (FixRes: test larger than the random crops trained on) keeps it while image_size changes.
    train_image_size: int = 0
    exported_from: str = ""  # a re-exported model: the sha256 of the model.onnx it was read from

    def __post_init__(self) -> None:
        if not self.train_image_size:
            object.__setattr__(self, "train_image_size", self.image_size)

    def to_props(self) -> dict[str, str]:
        """String key/values for ONNX metadata_props and Triton parameters."""
        props = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, tuple):
                value = json.dumps(list(value))
            elif isinstance(value, Mapping):
                value = json.dumps(dict(value), sort_keys=True)
            props[item.name] = str(value)
        props["cifar_stem"] = str(self.stem == "cifar").lower()  # what readers of files before `stem` look for
        for optional in ("quantized_from", "exported_from"):
            if not props[optional]:
                del props[optional]
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str | Path) -> ModelMetadata:
        """Parse metadata_props or Triton parameters; ValueError names `source` when a key is missing or bad."""
        try:
            stem = props.get("stem") or ("cifar" if props["cifar_stem"] == "true" else "imagenet")
            return cls(image_size=int(props["image_size"]), embedding_dim=int(props["embedding_dim"]),
                       architecture=props["architecture"], width=float(props["width"]), stem=stem,
                       mean=tuple(json.loads(props["mean"])), std=tuple(json.loads(props["std"])),
                       precision=props.get("precision", "fp32"), weights=props.get("weights", "fp32"),
                       recipe=json.loads(props.get("recipe", "{}")),
                       checkpoint_sha256=props.get("checkpoint_sha256", ""),
                       quantized_from=props.get("quantized_from", ""),
                       train_image_size=int(props.get("train_image_size", 0)),
                       exported_from=props.get("exported_from", ""))
        except KeyError as missing:
            raise ValueError(f"{source}: not a simclr encoder (its metadata has no {missing.args[0]})") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: unreadable simclr metadata ({error})") from None


def sha256_parameter(version: int | str) -> str:
    """The config.pbtxt parameter that records the sha256 of a version's model.onnx."""
    return f"onnx_sha256_v{version}"


def versions(model_dir: Path) -> list[int]:
    """The numeric version directories of a model, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(child.name) for child in model_dir.iterdir() if child.is_dir() and child.name.isdigit())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_config(model_dir: Path):
    """The ModelConfig protobuf of a model folder's config.pbtxt; ValueError naming the file when unreadable."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = Path(model_dir) / CONFIG_FILE
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror})") from None
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a Triton model configuration ({error})") from None
