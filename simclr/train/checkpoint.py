"""Atomic checkpoint files, loaded with torch's weights-only (pickle-safe) loader; encoder f read back from one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simclr.atomic import atomic_write_bytes
from simclr.errors import first_line
from simclr.train.config import TrainConfig
from simclr.train.model import ResNetEncoder

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
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {first_line(error)})"
                              ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "encoder" not in state:
        raise CheckpointError(f"{path}: not a simclr training checkpoint")
    return state


def resolve_checkpoint(source: Path) -> Path:
    """A checkpoint file, or a run directory's last.pt; FileNotFoundError names what is missing."""
    source = Path(source)
    if source.is_dir():
        source = source / CHECKPOINT_NAME
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint (give a last.pt or a run directory holding one)")
    return source


def load_encoder(checkpoint: Path) -> tuple[ResNetEncoder, TrainConfig]:
    """Encoder f (eval mode) and the run's config from a training checkpoint."""
    state = load_checkpoint(checkpoint)
    if state.get("kind") == "finetune":
        raise CheckpointError(f"{checkpoint}: a fine-tuning run; export its classifier with --classifier")
    try:
        config = TrainConfig.from_dict(state["config"])
        encoder = ResNetEncoder(config.model)
        encoder.load_state_dict(state["encoder"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # torch lists every mismatched tensor
        raise CheckpointError(f"{checkpoint}: its weights do not fit its recorded config ({first_line(error)})"
                              ) from None
    return encoder.eval(), config
