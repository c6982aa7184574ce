"""Checkpoints: an atomic round trip, weights-only loading that names the file it refuses, encoder f read back from
one, slim checkpoints (float16 weights, no optimiser state) and checkpoints split into parts."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch

from simclr.train.checkpoint import (
    CheckpointError,
    checkpoint_sha256,
    load_checkpoint,
    load_encoder,
    resolve_checkpoint,
    save_checkpoint,
    save_checkpoint_parts,
    slim_checkpoint,
)
from simclr.train.config import build_config
from simclr.train.model import ResNetEncoder, SimCLRModel


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
    with pytest.raises(FileNotFoundError, match="give a last.pt, its parts or a run directory"):
        resolve_checkpoint(tmp_path)


def _state() -> dict:
    """A small pre-training checkpoint's state: config, f and g, optimiser and scaler state, position and RNG."""
    config = build_config("cifar", {"data": "x", "model.width": 0.125})
    model = SimCLRModel(config.model)
    return {"config": dataclasses.asdict(config), "encoder": model.encoder.state_dict(),
            "head": model.head.state_dict(), "optimizer": {"state": {0: {"momentum": torch.ones(3, 3)}}},
            "scaler": {"scale": 1.0}, "epoch": 1, "step": 7, "epoch_steps": [[1.0, 0.5]],
            "rng": {"torch": torch.get_rng_state()}}


def test_slim_keeps_norms_and_position_and_halves_conv_and_linear_weights(tmp_path: Path) -> None:
    state = _state()
    slim = slim_checkpoint(state)
    assert slim["slim"] is True and "optimizer" not in slim and "scaler" not in slim
    assert {key: slim[key] for key in ("config", "epoch", "step", "epoch_steps")} == {
        key: state[key] for key in ("config", "epoch", "step", "epoch_steps")}
    assert torch.equal(slim["rng"]["torch"], state["rng"]["torch"])
    for part in ("encoder", "head"):
        for name, tensor in slim[part].items():
            halved = state[part][name].is_floating_point() and tensor.ndim >= 2
            assert tensor.dtype == (torch.float16 if halved else state[part][name].dtype), name
    save_checkpoint(tmp_path / "last.pt", slim)
    loaded = load_checkpoint(tmp_path / "last.pt")
    for part in ("encoder", "head"):  # float32 again, holding the float16 values
        for name, tensor in loaded[part].items():
            assert tensor.dtype == state[part][name].dtype and torch.equal(tensor, slim[part][name].to(tensor.dtype))
    encoder, _ = load_encoder(tmp_path / "last.pt")
    assert torch.equal(encoder.state_dict()["stem.0.weight"], slim["encoder"]["stem.0.weight"].float())


def test_parts_join_into_the_unsplit_file_and_load_by_any_name(tmp_path: Path) -> None:
    state = slim_checkpoint(_state())
    save_checkpoint(tmp_path / "whole" / "last.pt", state)
    whole = (tmp_path / "whole" / "last.pt").read_bytes()
    parts = save_checkpoint_parts(state, tmp_path / "run" / "last.pt", part_bytes=len(whole) // 3 + 1)
    assert [part.name for part in parts] == [f"last.pt.part-{i}-of-3" for i in (1, 2, 3)]
    assert all(part.stat().st_size <= len(whole) // 3 + 1 for part in parts)
    assert b"".join(part.read_bytes() for part in parts) == whole
    assert checkpoint_sha256(tmp_path / "run" / "last.pt") == checkpoint_sha256(tmp_path / "whole" / "last.pt")
    assert resolve_checkpoint(tmp_path / "run") == parts[0] == resolve_checkpoint(tmp_path / "run" / "last.pt")
    for name in (tmp_path / "run" / "last.pt", parts[1]):
        assert load_checkpoint(name)["step"] == 7
    assert not list((tmp_path / "run").glob(".*tmp*"))


def test_a_missing_part_is_named_and_a_mixture_of_splits_refused(tmp_path: Path) -> None:
    state = slim_checkpoint(_state())
    parts = save_checkpoint_parts(state, tmp_path / "last.pt", part_bytes=20_000)
    count = len(parts)
    parts[1].unlink()
    with pytest.raises(CheckpointError, match=f"last.pt.part-2-of-{count}: missing"):
        load_checkpoint(tmp_path / "last.pt")
    parts[0].rename(tmp_path / f"last.pt.part-1-of-{count + 1}")
    with pytest.raises(CheckpointError, match="different splits"):
        load_checkpoint(tmp_path / "last.pt")


def test_one_form_of_a_checkpoint_replaces_the_other(tmp_path: Path) -> None:
    state, path = slim_checkpoint(_state()), tmp_path / "last.pt"
    save_checkpoint(path, state)
    size = path.stat().st_size
    three = save_checkpoint_parts(state, path, part_bytes=size // 3 + 1)
    assert sorted(tmp_path.iterdir()) == three  # the whole file would shadow the parts: removed
    two = save_checkpoint_parts(state, path, part_bytes=size // 2 + 1)
    assert sorted(tmp_path.iterdir()) == two  # the stale split of three is gone
    save_checkpoint(path, state)  # a whole file (a resumed run's next save) removes the parts
    assert sorted(tmp_path.iterdir()) == [path]
    with pytest.raises(ValueError, match="part size 0"):
        save_checkpoint_parts(state, path, part_bytes=0)
