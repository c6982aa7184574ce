"""`simclr slim`: a real run's checkpoint made slim (float16 weights, no optimiser state), whole or in parts;
exported, resumed and refused from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.export.onnx_export import run_onnx
from simclr.train.checkpoint import checkpoint_sha256, load_checkpoint

from conftest import train_cli

SMALL = ["--width", "0.0625", "--image-size", "16", "--batch-size", "8", "--epochs", "2", "--workers", "0",
         "--warmup-epochs", "1"]


def _simclr(*args: str):
    return CliRunner().invoke(app, [*args])


@pytest.fixture(scope="module")
def run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory: 2 steps of ResNet-18 at 1/16 width on 16 px images."""
    return train_cli("--data", str(image_folder), "--out", str(tmp_path_factory.mktemp("slim") / "run"), *SMALL,
                     "--max-steps", "2")


def test_a_slim_checkpoint_has_half_weights_and_no_optimiser(run: Path, tmp_path: Path) -> None:
    result = _simclr("slim", str(run), "--out", str(tmp_path / "last.pt"), "--part-size", "0")
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()  # one line per file written, with its size
    assert line.startswith(f"wrote {tmp_path / 'last.pt'}: {(tmp_path / 'last.pt').stat().st_size:,} bytes (")
    full = torch.load(run / "last.pt", weights_only=True)
    stored = torch.load(tmp_path / "last.pt", weights_only=True)  # as stored, before load_checkpoint's cast
    assert stored["slim"] is True and "optimizer" not in stored and "scaler" not in stored
    assert {key: stored[key] for key in ("config", "epoch", "step", "epoch_steps")} == {
        key: full[key] for key in ("config", "epoch", "step", "epoch_steps")}
    for part in ("encoder", "head"):
        for name, tensor in stored[part].items():
            expected = torch.float16 if full[part][name].is_floating_point() and tensor.ndim >= 2 else full[
                part][name].dtype
            assert tensor.dtype == expected, name
            torch.testing.assert_close(tensor.float(), full[part][name].float(), rtol=1e-3, atol=1e-4, msg=name)
    assert (tmp_path / "last.pt").stat().st_size < (run / "last.pt").stat().st_size / 2.5
    loaded = load_checkpoint(tmp_path / "last.pt")  # callers see float32, the values as stored
    assert all(tensor.dtype != torch.float16 for tensor in loaded["encoder"].values())
    assert torch.equal(loaded["encoder"]["stem.0.weight"], stored["encoder"]["stem.0.weight"].float())


def test_parts_are_at_most_the_part_size_and_join_into_the_whole(run: Path, tmp_path: Path) -> None:
    assert _simclr("slim", str(run), "--out", str(tmp_path / "whole.pt"), "--part-size", "0").exit_code == 0
    result = _simclr("slim", str(run / "last.pt"), "--out", str(tmp_path / "carry" / "last.pt"), "--part-size",
                     "30K", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    parts = [Path(file["path"]) for file in summary["files"]]
    count = len(parts)
    assert count >= 2 and [part.name for part in parts] == [f"last.pt.part-{i}-of-{count}" for i in
                                                             range(1, count + 1)]
    assert all(part.stat().st_size <= 30 * 1024 for part in parts)
    whole = (tmp_path / "whole.pt").read_bytes()
    assert b"".join(part.read_bytes() for part in parts) == whole and summary["bytes"] == len(whole)
    assert summary["sha256"] == checkpoint_sha256(tmp_path / "whole.pt")


def _embeddings(source: Path, repo: Path, name: str, images: np.ndarray) -> np.ndarray:
    result = _simclr("export", str(source), "--repo", str(repo), "--name", name, "--no-bytes-model", "--json")
    assert result.exit_code == 0, result.output
    return run_onnx(Path(json.loads(result.output)["model"]), images)


def test_export_from_a_slim_checkpoint_and_from_its_parts(run: Path, tmp_path: Path) -> None:
    carry = tmp_path / "carry"
    assert _simclr("slim", str(run), "--out", str(tmp_path / "slim.pt"), "--part-size", "0").exit_code == 0
    assert _simclr("slim", str(run), "--out", str(carry / "last.pt"), "--part-size", "30K").exit_code == 0
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    full = _embeddings(run, tmp_path / "repo", "full", images)
    for name, source in [("slim", tmp_path / "slim.pt"), ("parts_dir", carry), ("parts", carry / "last.pt"),
                         ("one_part", next(carry.glob("last.pt.part-2-of-*")))]:
        embedded = _embeddings(source, tmp_path / "repo", name, images)
        assert np.abs(embedded - full).max() <= 1e-3 * np.abs(full).max(), name


def test_a_run_resumes_from_slim_parts_and_saves_a_whole_checkpoint(run: Path, tmp_path: Path) -> None:
    carry = tmp_path / "carry"
    assert _simclr("slim", str(run), "--out", str(carry / "last.pt"), "--part-size", "30K").exit_code == 0
    resumed = _simclr("train", "--out", str(carry), "--resume", "--max-steps", "3")
    assert resumed.exit_code == 0, resumed.output
    state = load_checkpoint(carry / "last.pt")
    assert state["step"] == 3 and "optimizer" in state and "slim" not in state
    assert not list(carry.glob("last.pt.part-*"))  # the whole file replaced the parts


def test_a_new_run_starts_from_slim_parts(run: Path, image_folder: Path, tmp_path: Path) -> None:
    carry = tmp_path / "carry"
    assert _simclr("slim", str(run), "--out", str(carry / "last.pt"), "--part-size", "30K").exit_code == 0
    started = _simclr("train", "--data", str(image_folder), "--init", str(carry), "--out", str(tmp_path / "next"),
                      *SMALL, "--max-steps", "1")
    assert started.exit_code == 0, started.output
    init = load_checkpoint(tmp_path / "next" / "last.pt")["init"]
    assert init["kind"] == "checkpoint" and init["sha256"] == checkpoint_sha256(carry / "last.pt")
    assert init["head_loaded"]


@pytest.mark.parametrize("case,message", [
    ("missing", "no-such-run: no such checkpoint"),
    ("text", "notes.pt: not a readable checkpoint"),
    ("part-size", "--part-size 15 apples: give a size such as 15MiB"),
])
def test_bad_input_is_one_line_naming_it(case: str, message: str, run: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    source = {"missing": tmp_path / "no-such-run", "text": tmp_path / "notes.pt"}.get(case, run)
    part_size = "15 apples" if case == "part-size" else "15MiB"
    result = _simclr("slim", str(source), "--out", str(tmp_path / "out.pt"), "--part-size", part_size)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output
    assert not (tmp_path / "out.pt").exists()
