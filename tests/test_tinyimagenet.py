"""Tiny ImageNet (../shared/data) as training data for the photo preset and as a labelled set for probe and kNN."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from simclr.cli.app import app

from conftest import train_cli


@pytest.mark.slow
def test_photo_preset_trains_exports_and_probes_on_tiny_imagenet(tinyimagenet_folder: Path, tinyimagenet_probe: Path,
                                                                   tmp_path: Path) -> None:
    # Two steps of the photo preset (200 photos, batch 100, one epoch), with the kNN monitor on the labelled set.
    run = train_cli("--data", str(tinyimagenet_folder), "--preset", "photo", "--out", str(tmp_path / "run"),
                    "--width", "0.125", "--batch-size", "100", "--epochs", "1", "--workers", "2",
                    "--knn-every", "1", "--knn-data", str(tinyimagenet_probe), "--knn-samples", "600")
    config = json.loads((run / "config.json").read_text())
    assert (config["preset"], config["model"]["stem"], config["augment"]["image_size"]) == ("photo", "small", 64)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch = [record for record in records if record["event"] == "epoch"]
    assert epoch[-1]["step"] == 2 and 0.0 <= epoch[-1]["knn_top1"] <= 1.0

    runner = CliRunner()
    exported = runner.invoke(app, ["export", str(run), "--repo", str(tmp_path / "repo"), "--name", "photo",
                                   "--weights", "fp16", "--json"])
    assert exported.exit_code == 0, exported.output
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "repo" / "photo" / "1" / "model.onnx")).metadata_props}
    assert (props["stem"], props["image_size"], props["weights"]) == ("small", "64", "fp16")

    # The probe reads `tinyimagenet.py probe` trees as they are. Its test split is its train split here, so the
    # nearest neighbour of each image is itself: 100% only if every row keeps its own label (200 classes).
    model = str(tmp_path / "repo" / "photo")
    probe = runner.invoke(app, ["probe", "--train", str(tinyimagenet_probe / "train"), "--test",
                                str(tinyimagenet_probe / "train"), "--model", model, "--knn-k", "1", "--json"])
    assert probe.exit_code == 0, probe.output
    report = json.loads(probe.stdout)
    assert (report["n_train"], report["n_test"], len(report["classes"])) == (600, 600, 200)
    assert report["knn_top1"] == 1.0
    held_out = runner.invoke(app, ["probe", "--train", str(tinyimagenet_probe / "train"), "--test",
                                   str(tinyimagenet_probe / "test"), "--model", model, "--json"])
    assert held_out.exit_code == 0, held_out.output
    assert json.loads(held_out.stdout)["n_test"] == 600
