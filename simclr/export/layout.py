"""The names the exported model and the model repository agree on (no heavy imports: clients use them too)."""

from __future__ import annotations

import hashlib
from pathlib import Path

INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"


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
