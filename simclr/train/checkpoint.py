"""Atomic checkpoint files, loaded with torch's weights-only (pickle-safe) loader."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "last.pt"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a simclr training checkpoint."""


def default_mode(directory: bool = False) -> int:
    """The permissions a plain open()/mkdir() would give under the current umask (mkstemp/mkdtemp use 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path` (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, default_mode())
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda file: file.write(text.encode()))


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
