"""Reading CIFAR batches: the real copy, and a crafted root that must not run code on any path."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.data.cifar import load_cifar, read_batch
from simclr.data.datasets import torchvision_split

from adversarial import hostile_cifar_root


def test_real_copy_reads_every_split(cifar_root: Path) -> None:
    images, labels, classes = load_cifar("cifar10", cifar_root, train=True)
    assert images.shape == (50000, 3, 32, 32) and labels.shape == (50000,) and classes[0] == "airplane"


def test_a_crafted_batch_is_refused_without_running_anything(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    root = hostile_cifar_root(tmp_path / "root", marker)
    with pytest.raises(ValueError, match="test_batch: not a CIFAR batch .*posix.system is not part of a CIFAR"):
        torchvision_split("cifar10", root, train=False)
    with pytest.raises(ValueError, match="not a CIFAR batch"):
        read_batch(root / "cifar-10-batches-py" / "batches.meta")
    assert not marker.exists()


@pytest.mark.parametrize("command", [
    ["probe", "--data", "cifar10", "--data-root", "{root}"],
    ["train", "--data", "cifar10", "--data-root", "{root}", "--out", "{out}", "--max-steps", "1"],
    ["train", "--data", "{images}", "--knn-every", "1", "--knn-data", "cifar10", "--data-root", "{root}",
     "--out", "{out}", "--epochs", "1", "--batch-size", "8", "--width", "0.0625", "--image-size", "16"],
])
def test_no_command_runs_a_crafted_batch(command: list[str], image_folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    root = hostile_cifar_root(tmp_path / "root", marker)
    args = [part.format(root=root, out=tmp_path / "run", images=image_folder) for part in command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "not a CIFAR batch" in result.output, result.output
    assert not marker.exists()
