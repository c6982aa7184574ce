"""simclr finetune: the labelled subset, the start from a checkpoint or an exported model (folded or not), the run,
its resume, the baselines of --compare, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.finetune.labels import balanced_rows, data_split, rows_from_labels_file
from simclr.finetune.onnx_weights import calibrate_folded_batch_norm, read_onnx_encoder
from simclr.finetune.run import finetune, labelled_sets, new_config
from simclr.train.checkpoint import load_checkpoint
from simclr.train.model import UInt8Encoder

from conftest import COLOURS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "model_repository" / "simclr_resnet18_photo"
# A few steps of a 1/8-width encoder on a generated 3-class set: with 8 labels a class, 3 steps an epoch.
QUICK = ["--epochs", "2", "--batch-size", "8", "--workers", "0", "--log-every", "1"]


def _invoke(*args: str):
    return CliRunner().invoke(app, ["finetune", *args])


def test_the_labelled_subset_is_class_balanced_and_seeded(labelled_folder: Path, tmp_path: Path) -> None:
    split = data_split(str(labelled_folder), None, True, 32, workers=0)
    rows = balanced_rows(split.labels, len(split.classes), 5, seed=3)
    assert np.bincount(split.labels[rows]).tolist() == [5, 5, 5]
    assert rows.tolist() == balanced_rows(split.labels, 3, 5, seed=3).tolist()
    assert rows.tolist() != balanced_rows(split.labels, 3, 5, seed=4).tolist()


def test_finetune_from_a_checkpoint_writes_the_run_and_compares(contract_run: Path, labelled_folder: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _invoke(str(contract_run), "--data", str(labelled_folder), "--labels-per-class", "8", *QUICK,
                     "--out", str(out), "--compare", "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout[result.stdout.index("{"):])
    for key in ("finetune", "scratch", "linear"):
        assert 0 <= results[key]["top1"] <= results[key]["top5"] <= 1
    assert results["labelled_images"] == 24 and results["classes"] == sorted(COLOURS)
    assert set(results["finetune"]["per_class"]) == set(COLOURS)
    assert {"labelled_images.txt", "last.pt", "config.json", "metrics.jsonl", "training_curves.png", "confusion.png",
            "results.json", "README.md", "scratch"} <= {path.name for path in out.iterdir()}
    lines = [line for line in (out / "labelled_images.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(lines) == 24 and all(line.split("\t")[1] == line.split("/")[0] for line in lines)
    # The scratch baseline trained on the same labels, with the same schedule.
    assert (out / "scratch" / "labelled_images.txt").read_text().splitlines()[2:] == lines
    assert results["scratch"]["steps"] == results["finetune"]["steps"] == 6
    config = json.loads((out / "config.json").read_text())
    assert config["head_layers_kept"] == 1 and config["epochs"] == 2 and config["weight_decay"] == 0
    assert "fine-tuned" in (out / "README.md").read_text()


def test_compare_decodes_each_image_once_and_heads_each_phase(contract_run: Path, labelled_folder: Path,
                                                              tmp_path: Path) -> None:
    result = _invoke(str(contract_run), "--data", str(labelled_folder), "--labels-per-class", "8", *QUICK,
                     "--out", str(tmp_path / "run"), "--compare")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # Two training runs, two evaluations and the probe, from one decode of each split.
    decoded = [line for line in lines if "decoded once into memory" in line]
    assert len(decoded) == 2, decoded
    assert f"{labelled_folder / 'train'}: 24 images" in decoded[0] and f"{labelled_folder / 'test'}: 18 images" in \
        decoded[1]
    plan = "on 24 labelled images (3 classes): 2 epochs x 3 steps of 8 = 6 steps; then the test split's 18 images"
    expected = ["1/3 fine-tuning the pre-trained encoder (run)", f"fine-tuning {plan}",
                "with the baseline of --compare",  # phase 1's estimate counts phase 2
                "2/3 the same network from random weights (the baseline)", f"training from random weights {plan}",
                "estimate: ", "3/3 linear probe (and kNN) of the pre-trained encoder on the same labels"]
    assert _in_order(expected, lines), result.output
    assert "| 6/6 [" in result.output and "| 3/3 [" not in result.output  # one bar over each run's 6 steps


def _in_order(parts: list[str], lines: list[str]) -> bool:
    """Whether each of `parts` is in a line after the line holding the part before it."""
    rest = iter(lines)
    return all(any(part in line for line in rest) for part in parts)


def test_epochs_read_the_images_decoded_once_not_the_files(contract_run: Path, labelled_folder: Path,
                                                           tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(labelled_folder, data)
    config = new_config(contract_run, {"data": str(data), "labels_per_class": 8, "epochs": 2, "batch_size": 8,
                                       "workers": 0})
    device = torch.device("cpu")
    reference = finetune(config, tmp_path / "reference", device, resume=False)
    decoded = labelled_sets(config, tmp_path / "decoded", resume=False)
    shutil.rmtree(data)  # training and evaluation cannot read a file any more
    outcome = finetune(config, tmp_path / "decoded", device, resume=False, decoded=decoded)
    assert outcome.steps == reference.steps == 6
    assert outcome.report.top1 == reference.report.top1 and outcome.labelled.train.keys == \
        reference.labelled.train.keys
    expected, actual = (load_checkpoint(tmp_path / run / "last.pt")["classifier"] for run in ("reference", "decoded"))
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_labels_file_reuses_the_labelled_images(contract_run: Path, labelled_folder: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    common = [str(contract_run), "--data", str(labelled_folder), *QUICK, "--max-steps", "1"]
    assert _invoke(*common, "--label-fraction", "0.25", "--seed", "5", "--out", str(first)).exit_code == 0
    reused = _invoke(*common, "--labels-file", str(first / "labelled_images.txt"), "--out", str(second))
    assert reused.exit_code == 0, reused.output
    assert (second / "labelled_images.txt").read_text().splitlines()[2:] == \
        (first / "labelled_images.txt").read_text().splitlines()[2:]
    split = data_split(str(labelled_folder), None, True, 32, workers=0)
    assert len(rows_from_labels_file(first / "labelled_images.txt", split)) == 12  # 25% of 48, 4 a class
    probe = CliRunner().invoke(app, ["probe", "--train", str(labelled_folder / "train"), "--test",
                                     str(labelled_folder / "test"), "--checkpoint", str(contract_run),
                                     "--labels-file", str(first / "labelled_images.txt"), "--knn-k", "5", "--json"])
    assert probe.exit_code == 0, probe.output
    assert json.loads(probe.stdout[probe.stdout.index("{"):])["n_train"] == 12


def test_resume_continues_exactly(contract_run: Path, labelled_folder: Path, tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = [str(contract_run), "--data", str(labelled_folder), "--labels-per-class", "8", *QUICK]
    assert _invoke(*common, "--out", str(whole)).exit_code == 0
    assert _invoke(*common, "--max-steps", "4", "--out", str(split)).exit_code == 0  # stops mid-epoch
    assert load_checkpoint(split / "last.pt")["step"] == 4
    resumed = _invoke("--out", str(split), "--resume", "--max-steps", "6")  # the rest comes from the run
    assert resumed.exit_code == 0, resumed.output
    expected, actual = (load_checkpoint(run / "last.pt")["classifier"] for run in (whole, split))
    assert load_checkpoint(split / "last.pt")["step"] == 6
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_torchrun_fine_tunes_with_two_gloo_processes(contract_run: Path, labelled_folder: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "simclr", "finetune",
               str(contract_run), "--data", str(labelled_folder), "--labels-per-class", "8", *QUICK, "--device",
               "cpu", "--out", str(out), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout[result.stdout.index("{"):])  # rank 0 alone prints
    assert results["finetune"]["steps"] == 6 and results["finetune"]["batch_size"] == 8
    assert load_checkpoint(out / "last.pt")["step"] == 6


def test_an_unfolded_export_reads_back_to_the_same_encoder(learned_repo: Path) -> None:
    read = read_onnx_encoder(learned_repo / "tiny")
    assert not read.folded
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        ours = UInt8Encoder(read.encoder)(torch.from_numpy(images)).numpy()
    assert np.abs(ours - OnnxEncoder(learned_repo / "tiny").embed(images)).max() <= 1e-4


def _folded_copy(model: Path, out: Path) -> Path:
    """`model` as exports before part 1/7 wrote it (the CIFAR model of git history is one): the TorchScript exporter
    in eval mode folds each batch norm into its convolution."""
    import onnx

    read = read_onnx_encoder(model)
    size = read.metadata.image_size
    torch.onnx.export(UInt8Encoder(read.encoder), (torch.zeros(2, size, size, 3, dtype=torch.uint8),), str(out),
                      input_names=["image"], output_names=["embedding"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}})
    folded = onnx.load(str(out))
    onnx.helper.set_model_props(folded, {prop.key: prop.value for prop in onnx.load(str(read.path)).metadata_props})
    onnx.save(folded, str(out))
    return out


def test_a_folded_export_reads_back_and_keeps_its_function_in_train_mode(learned_repo: Path, cifar_root: Path,
                                                                         tmp_path: Path) -> None:
    model = _folded_copy(learned_repo / "tiny", tmp_path / "folded.onnx")
    read = read_onnx_encoder(model)
    assert read.folded
    split = data_split("cifar10", cifar_root, True, read.metadata.image_size)
    images = split.load(np.arange(64)).images
    pixels = images.permute(0, 2, 3, 1).contiguous()
    reference = OnnxEncoder(model).embed(pixels.numpy())
    calibrate_folded_batch_norm(read.encoder, images.float() / 255)
    with torch.no_grad():
        in_eval = UInt8Encoder(read.encoder.eval())(pixels).numpy()
        in_train = read.encoder.train().features(images.float() / 255).numpy()
    assert np.abs(in_eval - reference).max() <= 1e-4
    assert np.abs(in_train - reference).max() <= 1e-4


@pytest.mark.slow
def test_finetune_from_the_exported_default_model(labelled_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _invoke(str(DEFAULT_MODEL), "--data", str(labelled_folder), *QUICK, "--max-steps", "2",
                     "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["head_layers_kept"] == 0 and config["model"]["arch"] == "resnet18"
    assert load_checkpoint(out / "last.pt")["step"] == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--label-fraction", "0"], "--label-fraction 0.0: must be in (0, 1]"),
    (["--label-fraction", "0.1", "--labels-per-class", "2"], "--label-fraction and --labels-per-class"),
    (["--labels-file", "/nonexistent.txt"], "--labels-file /nonexistent.txt: no such file"),
    (["--head-layers-kept", "1"], "is an exported model, which has no projection head g"),
    (["--data", "/nonexistent"], "--data /nonexistent: no /nonexistent/train"),
])
def test_bad_input_is_one_line(labelled_folder: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    data = [] if "--data" in args else ["--data", str(labelled_folder)]
    result = _invoke(str(DEFAULT_MODEL), *data, *args, *QUICK, "--out", str(out))
    assert result.exit_code == 1 and message in result.output, result.output
    assert result.output.count("\n") == 1
    assert not (out / "last.pt").exists()


def test_a_labels_file_of_other_data_is_refused(labelled_folder: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labelled_images.txt"
    labels.write_text("# other\nred/00.png\tgreen\n")
    result = _invoke(str(DEFAULT_MODEL), "--data", str(labelled_folder), "--labels-file", str(labels), *QUICK,
                     "--out", str(tmp_path / "run"))
    assert result.exit_code == 1
    assert f"{labels}:2: image 'red/00.png' has class 'red' here, not 'green'" in result.output


@pytest.mark.parametrize("bad_name", ["line\nbreak", os.fsdecode(b"caf\xe9")])
def test_a_class_folder_name_that_cannot_be_one_line_is_refused_naming_it(contract_run: Path, labelled_folder: Path,
                                                                          tmp_path: Path, bad_name: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(labelled_folder, data)
    first = sorted((data / "train").iterdir())[0]
    first.rename(first.with_name(bad_name))
    result = _invoke(str(contract_run), "--data", str(data), "--labels-per-class", "4", *QUICK,
                     "--out", str(tmp_path / "run"))
    assert result.exit_code == 1 and "has a tab, a line break" in result.output, result.output
    assert repr(bad_name) in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "run" / "last.pt").exists()
