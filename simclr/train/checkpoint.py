"""Atomic checkpoint files, loaded with torch's weights-only (pickle-safe) loader; encoder f read back from one.

A checkpoint NAME is either one file or, to travel where files are size-limited, the files NAME.part-1-of-K ...
NAME.part-K-of-K: consecutive slices of the same bytes (`cat` joins them back into NAME). A slim checkpoint (no
optimiser state, conv/linear weights in float16) is what `simclr slim` writes for such trips."""

from __future__ import annotations

import glob
import hashlib
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from simclr.atomic import atomic_write_bytes, replaced_together
from simclr.errors import first_line
from simclr.train.config import TrainConfig
from simclr.train.model import ResNetEncoder

CHECKPOINT_NAME = "last.pt"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1
SLIM_DROPPED = ("optimizer", "scaler")  # what a slim checkpoint leaves out: a resume starts with fresh momentum
MODEL_PARTS = ("encoder", "head")  # the state dicts whose weights a slim checkpoint stores in float16
PART_PATTERN = re.compile(r"(?P<name>.+)\.part-(?P<index>\d+)-of-(?P<count>\d+)")


class CheckpointError(ValueError):
    """A file that is not a simclr training checkpoint."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (tensors, numbers, strings, lists and dicts only) atomically, as one file; parts of an earlier
    checkpoint of the same name are removed."""
    _write_whole(Path(path), lambda file: torch.save({"format": FORMAT_VERSION, **state}, file))


def save_checkpoint_parts(state: dict[str, Any], path: Path, part_bytes: int) -> list[Path]:
    """Write `state` as the files `path`.part-1-of-K ... `path`.part-K-of-K of at most `part_bytes` bytes each
    (K >= 1), all or nothing; returns them in order. A file `path` and parts of another K are removed."""
    if part_bytes < 1:
        raise ValueError(f"part size {part_bytes}: must be at least 1 byte")
    return _write_parts(Path(path), _serialized(state), part_bytes)


def slim_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """`state` without optimiser and gradient-scaler state, its encoder and head weights of ndim >= 2 (conv and
    linear) in float16, marked "slim": True. Norm parameters, biases, running statistics, config, position and RNG
    states stay as they are, so that a run continues from it with fresh momentum."""
    slim = {key: value for key, value in state.items() if key not in SLIM_DROPPED}
    for part in MODEL_PARTS:
        if part in slim:
            slim[part] = {name: tensor.half() if tensor.is_floating_point() and tensor.ndim >= 2 else tensor
                          for name, tensor in slim[part].items()}
    return {**slim, "slim": True}


def save_slim_checkpoint(source: Path, out: Path, part_bytes: int) -> list[Path]:
    """The slim checkpoint of `source` (a run directory, a checkpoint or its parts) written to `out`, split into
    parts of at most `part_bytes` when larger (0: never split); returns the files written."""
    state = load_checkpoint(resolve_checkpoint(source))
    if state.get("kind") == "finetune":
        raise CheckpointError(f"{source}: a fine-tuning run; slim takes a simclr train checkpoint")
    data = _serialized(slim_checkpoint(state))
    if 0 < part_bytes < len(data):
        return _write_parts(Path(out), data, part_bytes)
    return _write_whole(Path(out), lambda file: file.write(data))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (a file, or the parts of `path` when only they exist; `path` may also name one of its
    parts) with weights_only=True; CheckpointError names the file when it is not one of ours, or the missing part.
    Float16 weights of a slim checkpoint come back as float32."""
    path = Path(path)
    files = _checkpoint_files(path)
    source = files[0] if files == [path] else io.BytesIO(b"".join(part.read_bytes() for part in files))
    try:
        state = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for foreign or damaged files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {first_line(error)})"
                              ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "encoder" not in state:
        raise CheckpointError(f"{path}: not a simclr training checkpoint")
    for part in MODEL_PARTS:
        if isinstance(state.get(part), dict):
            state[part] = {name: tensor.float() if tensor.dtype == torch.float16 else tensor
                           for name, tensor in state[part].items()}
    return state


def checkpoint_parts(path: Path) -> list[Path]:
    """The parts of checkpoint `path` (or of the checkpoint one part of which `path` names), in order;
    CheckpointError names a missing part or a mixture of splits, or says that there is no such checkpoint."""
    path = Path(path)
    base = _base(path)
    found = _parts_of(base)
    if not found:
        raise CheckpointError(f"{path}: no such checkpoint file (nor its parts {base.name}.part-N-of-K)")
    counts = sorted({count for _, count in found})
    if len(counts) > 1:
        raise CheckpointError(f"{base}: parts of {len(counts)} different splits (of {', '.join(map(str, counts))}); "
                              "remove the stale ones")
    count = counts[0]
    for index in range(1, count + 1):
        if (index, count) not in found:
            raise CheckpointError(f"{_part_path(base, index, count)}: missing (checkpoint {base.name} is split "
                                  f"into {count} parts)")
    return [_part_path(base, index, count) for index in range(1, count + 1)]


def resolve_checkpoint(source: Path) -> Path:
    """A checkpoint file, or a run directory's last.pt; for a checkpoint split into parts, the path of its first
    part (an existing file, which load_checkpoint reads with the others). FileNotFoundError names what is missing."""
    source = Path(source)
    if source.is_dir():
        source = source / CHECKPOINT_NAME
    if source.is_file():
        return source
    base = _base(source)
    parts = _parts_of(base)
    if not parts:
        raise FileNotFoundError(f"{source}: no such checkpoint (give a last.pt, its parts or a run directory "
                                "holding one)")
    return _part_path(base, *min(parts))


def checkpoint_sha256(path: Path) -> str:
    """The sha256 of checkpoint `path`'s bytes: of the file, or of its parts joined (= the unsplit file's)."""
    digest = hashlib.sha256()
    for file in _checkpoint_files(Path(path)):
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_encoder(checkpoint: Path) -> tuple[ResNetEncoder, TrainConfig]:
    """Encoder f (eval mode) and the run's config from a training checkpoint (whole, slim or in parts)."""
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


def _serialized(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    return buffer.getvalue()


def _checkpoint_files(path: Path) -> list[Path]:
    """[path] for a whole checkpoint file, else its parts in order (CheckpointError as in checkpoint_parts)."""
    return [path] if path.is_file() and not PART_PATTERN.fullmatch(path.name) else checkpoint_parts(path)


def _base(path: Path) -> Path:
    """The checkpoint a part file belongs to (NAME of NAME.part-I-of-K); any other path itself."""
    named = PART_PATTERN.fullmatch(path.name)
    return path.with_name(named["name"]) if named else path


def _write_whole(path: Path, write: Callable[[BinaryIO], object]) -> list[Path]:
    atomic_write_bytes(path, write)
    _remove_stale(path, keep=[path])
    return [path]


def _part_path(base: Path, index: int, count: int) -> Path:
    return base.with_name(f"{base.name}.part-{index}-of-{count}")


def _parts_of(base: Path) -> set[tuple[int, int]]:
    """(index, count) of every part file of checkpoint `base` on disk (temporaries start with a dot: not matched)."""
    found = set()
    for candidate in base.parent.glob(f"{glob.escape(base.name)}.part-*-of-*"):
        match = PART_PATTERN.fullmatch(candidate.name)
        if match and match["name"] == base.name and 1 <= int(match["index"]) <= int(match["count"]):
            found.add((int(match["index"]), int(match["count"])))
    return found


def _write_parts(base: Path, data: bytes, part_bytes: int) -> list[Path]:
    count = max(1, -(-len(data) // part_bytes))
    paths = [_part_path(base, index, count) for index in range(1, count + 1)]
    with replaced_together(*paths) as files:
        for index, file in enumerate(files):
            file.write(data[index * part_bytes:(index + 1) * part_bytes])
    _remove_stale(base, keep=paths)
    return paths


def _remove_stale(base: Path, keep: list[Path]) -> None:
    """Remove the other form of checkpoint `base` (the whole file, or parts of any split) than the files `keep`:
    a whole file would shadow new parts, and stale parts would outlive the checkpoint they belonged to."""
    stale = [base] + [_part_path(base, index, count) for index, count in _parts_of(base)]
    for path in stale:
        if path not in keep:
            path.unlink(missing_ok=True)
