"""The training run end to end: resume exactness, signals, divergence, the tiny CIFAR run, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.train.checkpoint import load_checkpoint, save_checkpoint
from simclr.train.config import build_config
from simclr.train.epochs import TrainingError, TrainingInterrupted
from simclr.train.loop import Trainer, train

SMALL = ["--width", "0.0625", "--image-size", "16", "--batch-size", "8", "--epochs", "3", "--workers", "0",
         "--warmup-epochs", "1", "--log-every", "1"]


def _invoke(*args: str):
    return CliRunner().invoke(app, ["train", *args])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "last.pt")
    return {**{f"encoder.{k}": v for k, v in state["encoder"].items()},
            **{f"head.{k}": v for k, v in state["head"].items()}}


def test_resume_continues_exactly(image_folder: Path, tmp_path: Path) -> None:
    # 3 steps per epoch: stop mid-epoch at step 4, resume to step 8, against 8 uninterrupted steps.
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert _invoke("--data", str(image_folder), "--out", str(whole), *SMALL, "--max-steps", "8").exit_code == 0
    assert _invoke("--data", str(image_folder), "--out", str(split), *SMALL, "--max-steps", "4").exit_code == 0
    assert load_checkpoint(split / "last.pt")["step"] == 4
    resumed = _invoke("--out", str(split), "--resume", "--max-steps", "8")  # the data comes from the run
    assert resumed.exit_code == 0, resumed.output
    expected, actual = _weights(whole), _weights(split)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "step"]
    assert steps == list(range(1, 9))


def test_resume_refuses_a_recipe_option_that_differs_from_the_run(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _invoke("--data", str(image_folder), "--out", str(out), *SMALL, "--max-steps", "1").exit_code == 0
    before = (out / "last.pt").read_bytes()
    for args, named, why in ((["--epochs", "2"], "--epochs 2", "is shorter than the run's 3"),
                             (["--temperature", "0.1"], "--temperature 0.1", "differs from the run's"),
                             (["--data", str(tmp_path)], f"--data {tmp_path}", "give the folder that holds the run's"),
                             (["--preset", "photo"], "--preset photo", "differs from the run's")):
        refused = _invoke("--out", str(out), "--resume", *args)
        assert refused.exit_code == 1 and named in refused.output and why in refused.output, refused.output
        assert refused.output.count("\n") == 1
    assert (out / "last.pt").read_bytes() == before
    # Repeating the run's own values, and changing what only drives the run, is fine.
    same = _invoke("--data", str(image_folder), "--out", str(out), "--resume", "--epochs", "3", "--width", "0.0625",
                   "--max-steps", "2", "--log-every", "2", "--workers", "0")
    assert same.exit_code == 0, same.output
    assert load_checkpoint(out / "last.pt")["step"] == 2


def test_new_run_needs_data(tmp_path: Path) -> None:
    result = _invoke("--out", str(tmp_path / "run"))
    assert result.exit_code == 1 and "--data is required for a new run" in result.output


def test_run_directory_holds_checkpoint_config_metrics_and_curves(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _invoke("--data", str(image_folder), "--out", str(out), *SMALL, "--json")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"last.pt", "config.json", "metrics.jsonl", "training_curves.png"}
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["width"] == 0.0625 and config["preset"] == "cifar"
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 3 and state["step"] == 9
    assert Image.open(out / "training_curves.png").size[0] > 400


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _invoke("--data", str(image_folder), "--out", str(out), *SMALL, "--max-steps", "2").exit_code == 0
    state = load_checkpoint(out / "last.pt")
    state["encoder"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state["encoder"].items()}
    save_checkpoint(out / "last.pt", {k: v for k, v in state.items() if k != "format"})
    saved = (out / "last.pt").read_bytes()
    config = build_config("cifar", {"data": str(image_folder), "augment.image_size": 16, "batch_size": 8,
                                    "model.width": 0.0625, "workers": 0, "epochs": 3})
    with pytest.raises(TrainingError, match="loss became nan at step 3"):
        train(config, out, resume=True)
    assert (out / "last.pt").read_bytes() == saved


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "simclr", "train", "--data", str(image_folder), "--out", str(out), *SMALL,
               "--epochs", "1000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "continue with --resume" in stderr
    assert (out / "training_curves.png").is_file()
    step = load_checkpoint(out / "last.pt")["step"]
    assert step >= 3
    resumed = _invoke("--data", str(image_folder), "--out", str(out), "--resume", "--max-steps", str(step + 1))
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(out / "last.pt")["step"] == step + 1


def test_signal_on_the_last_step_of_an_epoch_finishes_that_epoch(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = build_config("cifar", {"data": str(image_folder), "augment.image_size": 16, "batch_size": 8,
                                    "model.width": 0.0625, "workers": 0, "epochs": 3, "device": "cpu"})
    trainer = Trainer(config, out, torch.device("cpu"), resume=False)
    one_step = trainer.train_step

    def step_then_sigterm_at_the_epoch_end(images: torch.Tensor) -> tuple[float, float]:
        result = one_step(images)
        if trainer.step == trainer.steps_per_epoch:
            signal.raise_signal(signal.SIGTERM)
        return result

    trainer.train_step = step_then_sigterm_at_the_epoch_end
    with pytest.raises(TrainingInterrupted, match="continue with --resume"):
        trainer.run()
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step"]) == (1, trainer.steps_per_epoch)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in epochs if record["event"] == "epoch"] == [1]
    resumed = _invoke("--data", str(image_folder), "--out", str(out), "--resume", "--max-steps",
                      str(trainer.steps_per_epoch + 1))
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(out / "last.pt")["step"] == trainer.steps_per_epoch + 1


def test_tiny_cifar_run_lowers_the_loss_and_raises_contrastive_accuracy(tiny_run: Path) -> None:
    steps = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    epochs = [record for record in steps if record["event"] == "epoch"]
    first, last = epochs[0], epochs[-1]
    assert last["loss"] < first["loss"] - 0.1
    assert last["contrastive_accuracy"] > first["contrastive_accuracy"] + 0.02


def test_empty_folder_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = _invoke("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run"), *SMALL)
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "no image files found" in result.output
    assert not (tmp_path / "run").exists()


def test_folder_of_non_images_is_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    for index in range(10):
        (folder / f"{index}.jpg").write_bytes(b"this is not a JPEG file")
    result = _invoke("--data", str(folder), "--out", str(tmp_path / "run"), *SMALL)
    assert result.exit_code == 1
    assert "error: " in result.output.strip().splitlines()[-1]
    assert "could be decoded" in result.output
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "1"], "--batch-size 1"),
    (["--workers", "-1"], "--workers -1"),
    (["--head-hidden", "-3"], "--head-hidden -3"),
])
def test_bad_values_name_the_option(image_folder: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = _invoke("--data", str(image_folder), "--out", str(tmp_path / "run"), *args)
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize("flag,value,choices", [
    ("--arch", "resnet99", "'resnet18', 'resnet34', 'resnet50'"),
    ("--optimizer", "adam", "'lars', 'sgd', 'adamw'"),
    ("--preset", "mnist", "'cifar', 'imagenet', 'photo'"),
    ("--stem", "tiny", "'cifar', 'imagenet', 'small'"),
    ("--precision", "fp8", "'auto', 'fp32', 'bf16', 'fp16'"),
    ("--lr-scaling", "log", "'linear', 'sqrt'"),
])
def test_options_with_fixed_values_list_their_choices(image_folder: Path, tmp_path: Path, flag: str, value: str,
                                                      choices: str) -> None:
    result = _invoke("--data", str(image_folder), "--out", str(tmp_path / "run"), flag, value)
    assert result.exit_code == 2  # refused by the parser, before anything runs
    assert flag in result.output and choices in result.output
    assert not (tmp_path / "run").exists()


def test_help_lists_choices_defaults_and_their_sources() -> None:
    result = subprocess.run([sys.executable, "-m", "simclr", "train", "--help"], capture_output=True, text=True)
    text = " ".join(result.stdout.split())
    assert "--preset <cifar|imagenet|photo>" in text and "--stem <cifar|imagenet|small>" in text
    assert "google-research/simclr" in text and "solo-learn" in text
    assert "[default: 1e-4 cifar and photo, 1e-6 imagenet; see --preset]" in text
    assert "--seed <int> Seed for weights, shuffling and augmentation. [default: 0]" in text


def test_unknown_flag_and_missing_data_root_are_refused(tmp_path: Path) -> None:
    assert _invoke("--data", "x", "--out", str(tmp_path), "--no-such-flag").exit_code == 2
    result = _invoke("--data", "cifar10", "--out", str(tmp_path / "run"))
    assert result.exit_code == 1 and "--data-root" in result.output


def test_existing_run_is_not_overwritten_and_resume_needs_a_run(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _invoke("--data", str(image_folder), "--out", str(out), "--resume")
    assert result.exit_code == 1 and "nothing to resume" in result.output
    assert _invoke("--data", str(image_folder), "--out", str(out), *SMALL, "--max-steps", "1").exit_code == 0
    before = (out / "last.pt").read_bytes()
    result = _invoke("--data", str(image_folder), "--out", str(out), *SMALL)
    assert result.exit_code == 1 and "--resume" in result.output
    assert (out / "last.pt").read_bytes() == before


def test_cifar_copy_loads_without_the_official_md5(cifar_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    from simclr.data.datasets import torchvision_split

    with caplog.at_level("WARNING", logger="simclr"):
        test = torchvision_split("cifar10", cifar_root, train=False)
    assert test.images.shape == (10000, 3, 32, 32) and test.images.dtype == torch.uint8
    assert len(test.classes) == 10 and int(test.labels.max()) == 9
    assert "md5" in caplog.text


def test_python_module_entry_point_shows_help() -> None:
    result = subprocess.run([sys.executable, "-m", "simclr", "train", "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0 and "--max-steps" in result.stdout and "--resume" in result.stdout


def test_an_epoch_resumed_midway_reports_the_mean_of_all_its_steps(image_folder: Path, tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert _invoke("--data", str(image_folder), "--out", str(whole), *SMALL, "--max-steps", "3").exit_code == 0
    assert _invoke("--data", str(image_folder), "--out", str(split), *SMALL, "--max-steps", "1").exit_code == 0
    assert _invoke("--out", str(split), "--resume", "--max-steps", "3").exit_code == 0

    def epoch_one(run: Path) -> dict:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return next(r for r in records if r["event"] == "epoch" and r["epoch"] == 1)

    assert epoch_one(split) == epoch_one(whole)  # steps 1-3, not only the two after the resume


def _steps(run: Path, key: str = "step") -> list:
    return [json.loads(line)[key] for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "step"]


def test_a_run_stopped_by_max_steps_resumes_to_its_planned_end(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"  # 3 epochs of 3 steps
    assert _invoke("--data", str(image_folder), "--out", str(out), *SMALL, "--max-steps", "3").exit_code == 0
    resumed = _invoke("--out", str(out), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(out / "last.pt")["step"] == 9 and _steps(out) == list(range(1, 10))
    assert "trained 6 steps (step 9 of 9, 3 epochs done)" in resumed.output and "nan" not in resumed.output
    done = _invoke("--out", str(out), "--resume")
    assert done.exit_code == 0, done.output
    assert "nothing left to train" in done.output and "larger --epochs" in done.output and "nan" not in done.output


def test_resume_with_more_epochs_replans_the_cosine_to_the_new_end(image_folder: Path, tmp_path: Path) -> None:
    from simclr.train.optim import warmup_cosine

    out = tmp_path / "run"
    assert _invoke("--data", str(image_folder), "--out", str(out), *SMALL).exit_code == 0  # 9 steps
    longer = _invoke("--out", str(out), "--resume", "--epochs", "5")
    assert longer.exit_code == 0, longer.output
    assert load_checkpoint(out / "last.pt")["step"] == 15
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 5 and config["plan"]["events"] == [
        "step 9: --epochs 3 -> 5 on resume: the cosine re-planned to end at step 15"]
    peak = 0.3 * 8 / 256  # the default base lr, linear scaling, batch 8; warm-up 1 epoch = 3 steps
    assert _steps(out, "lr")[9:] == pytest.approx(warmup_cosine(peak, 15, 3)[9:])


def test_resume_finds_the_same_images_moved_to_another_folder(image_folder: Path, tmp_path: Path) -> None:
    import shutil

    first, moved, other = tmp_path / "first", tmp_path / "moved", tmp_path / "other"
    shutil.copytree(image_folder, first)
    out = tmp_path / "run"
    assert _invoke("--data", str(first), "--out", str(out), *SMALL, "--max-steps", "2").exit_code == 0
    shutil.copytree(first, other)
    next(other.rglob("*.png")).unlink()
    first.rename(moved)
    refused = _invoke("--out", str(out), "--resume", "--data", str(other))
    assert refused.exit_code == 1 and "23 images" in refused.output and "24 images" in refused.output
    assert _invoke("--out", str(out), "--resume").exit_code == 1  # its own folder is gone: named
    resumed = _invoke("--out", str(out), "--resume", "--data", str(moved), "--max-steps", "4")
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(out / "last.pt")["step"] == 4
    assert load_checkpoint(out / "last.pt")["config"]["data"] == str(moved)


def test_a_slim_checkpoint_resumes_with_fresh_momentum(image_folder: Path, tmp_path: Path) -> None:
    from simclr.train.checkpoint import slim_checkpoint

    full, slim = tmp_path / "full", tmp_path / "slim"
    assert _invoke("--data", str(image_folder), "--out", str(full), *SMALL, "--max-steps", "4").exit_code == 0
    slim.mkdir()
    save_checkpoint(slim / "last.pt", slim_checkpoint(load_checkpoint(full / "last.pt")))
    resumed = _invoke("--out", str(slim), "--resume", "--max-steps", "6")
    assert resumed.exit_code == 0, resumed.output
    assert "slim checkpoint (no optimiser state): resuming with fresh momentum" in resumed.output
    state = load_checkpoint(slim / "last.pt")
    assert state["step"] == 6 and "optimizer" in state  # a full checkpoint again from here on


def _conv_weights(state: dict) -> dict[str, torch.Tensor]:
    return {name: value.float() for name, value in state.items() if value.ndim == 4}


def test_init_starts_a_new_run_from_a_run(image_folder: Path, tmp_path: Path) -> None:
    source, out = tmp_path / "source", tmp_path / "run"
    assert _invoke("--data", str(image_folder), "--out", str(source), *SMALL, "--max-steps", "3").exit_code == 0
    # A learning rate of 0 leaves the weights where they started: exactly the source's.
    result = _invoke("--data", str(image_folder), "--out", str(out), *SMALL, "--init", str(source),
                     "--base-lr", "0", "--max-steps", "1")
    assert result.exit_code == 0, result.output
    state, started = load_checkpoint(out / "last.pt"), load_checkpoint(source / "last.pt")
    assert state["step"] == 1 and state["init"]["kind"] == "checkpoint" and state["init"]["head_loaded"]
    for name, value in _conv_weights(started["encoder"]).items():
        torch.testing.assert_close(state["encoder"][name], value, rtol=0, atol=0, msg=name)


def test_init_from_an_exported_model_takes_its_shape_and_a_new_head(image_folder: Path, tiny_repo: Path,
                                                                     tmp_path: Path) -> None:
    from simclr.finetune.onnx_weights import read_onnx_encoder

    model = tiny_repo / "tiny"
    args = [a for a in SMALL if a not in ("--width", "0.0625")]
    clash = _invoke("--data", str(image_folder), "--out", str(tmp_path / "clash"), *SMALL, "--init", str(model))
    assert clash.exit_code == 1 and "--width 0.0625" in clash.output and str(model) in clash.output
    assert not (tmp_path / "clash").exists()
    out = tmp_path / "run"
    result = _invoke("--data", str(image_folder), "--out", str(out), *args, "--init", str(model), "--base-lr", "0",
                     "--max-steps", "1")
    assert result.exit_code == 0, result.output
    state = load_checkpoint(out / "last.pt")
    read = read_onnx_encoder(model)
    assert state["init"]["kind"] == "onnx" and not state["init"]["head_loaded"]
    assert state["config"]["model"]["width"] == read.model_config.width
    for name, value in _conv_weights(read.encoder.state_dict()).items():
        torch.testing.assert_close(state["encoder"][name], value, rtol=0, atol=0, msg=name)


def test_init_gives_a_short_warm_up_unless_one_is_given() -> None:
    assert build_config("photo", {"data": "x", "init": "run"}).optim.warmup_epochs == 2.0
    assert build_config("photo", {"data": "x", "init": "run", "optim.warmup_epochs": 5.0}).optim.warmup_epochs == 5.0
    assert build_config("photo", {"data": "x"}).optim.warmup_epochs == 10.0


@pytest.mark.slow
def test_time_budget_ends_the_whole_schedule_within_it(image_folder: Path, tmp_path: Path) -> None:
    out, budget = tmp_path / "run", 12.0
    started = time.monotonic()
    result = _invoke("--data", str(image_folder), "--out", str(out), *SMALL, "--epochs", "100000", "--time-budget",
                     str(budget), "--log-every", "50", "--json")
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    plan = config["plan"]
    # whole epochs of 3 steps, unless not even one fits (a machine busy enough to make 3 steps outlast the budget)
    whole = plan["total_steps"] // 3 if plan["total_steps"] >= 3 else 1
    assert plan["total_steps"] % 3 == 0 or plan["total_steps"] < 3
    assert config["epochs"] == whole < 100000
    assert "--time-budget 12 s" in plan["events"][0] and plan["pairs_per_second"] > 0
    assert load_checkpoint(out / "last.pt")["step"] == plan["total_steps"]  # the whole schedule ran
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["total_steps"] for r in records if r["event"] == "plan"] == [plan["total_steps"]]
    assert took < budget + 6  # the budget counts from the trainer's start; the slack covers the CLI around it
