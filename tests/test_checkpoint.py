"""Checkpoints: an atomic round trip, weights-only loading that names the file it refuses, and encoder f read
back from one."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch

from simclr.train.checkpoint import CheckpointError, load_checkpoint, load_encoder, resolve_checkpoint, save_checkpoint
from simclr.train.config import build_config
from simclr.train.model import ResNetEncoder


def test_round_trip_and_encoder_read_back(tmp_path: Path) -> None:
    config = build_config("cifar", {"data": "x", "model.width": 0.125})
    encoder = ResNetEncoder(config.model)
    save_checkpoint(tmp_path / "last.pt", {"config": dataclasses.asdict(config), "encoder": encoder.state_dict()})
    assert resolve_checkpoint(tmp_path) == tmp_path / "last.pt"
    loaded, loaded_config = load_encoder(tmp_path / "last.pt")
    assert loaded_config == config and not loaded.training
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("content,message", [
    (b"not a checkpoint", "not a readable checkpoint"),
    (pickle.dumps(Path("/etc/passwd"), protocol=2), "not a readable checkpoint"),  # an object: never unpickled
], ids=["text", "pickled-object"])
def test_foreign_files_are_named_and_refused(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "last.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=f"last.pt: {message}"):
        load_checkpoint(tmp_path / "last.pt")


def test_a_torch_file_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a simclr training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_missing_checkpoint_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="give a last.pt or a run directory"):
        resolve_checkpoint(tmp_path)
