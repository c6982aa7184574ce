"""Atomic checkpoint files, loaded with torch's weights-only (pickle-safe) loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simclr.atomic import atomic_write_bytes

CHECKPOINT_NAME = "last.pt"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a simclr training checkpoint."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (tensors, numbers, strings, lists and dicts only) atomically."""
    atomic_write_bytes(path, lambda file: torch.save({"format": FORMAT_VERSION, **state}, file))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; CheckpointError names the file when it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for foreign or damaged files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {first_line})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "encoder" not in state:
        raise CheckpointError(f"{path}: not a simclr training checkpoint")
    return state
