"""Shared fixtures: the CIFAR-10 copy from ../shared/data and the one tiny encoder trained per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SIMCLR_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("SIMCLR_TEST_CACHE", REPO / ".cache"))

# The tiny encoder of the test session: ResNet-18 at 1/8 width on 2,000 CIFAR-10 training images.
TINY_TRAIN_ARGS = ["--width", "0.125", "--batch-size", "128", "--epochs", "8", "--warmup-epochs", "1",
                   "--base-lr", "1.0", "--log-every", "3", "--workers", "2", "--seed", "0"]


def _cifar_script() -> Path:
    script = SHARED_DATA / "cifar10.py"
    if not script.is_file():
        pytest.skip(f"CIFAR-10 copy not found at {SHARED_DATA} (set SIMCLR_SHARED_DATA to ../shared/data)")
    return script


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """A folder holding cifar-10-batches-py/ (torchvision's layout), written once and reused."""
    script = _cifar_script()
    root = CACHE / "data"
    subprocess.run([sys.executable, str(script), "batches", str(root)], check=True, capture_output=True)
    return root


@pytest.fixture(scope="session")
def cifar_folders() -> Path:
    """CIFAR-10 as image folders: train/<class>/ (200 per class) and test/<class>/ (50 per class)."""
    script = _cifar_script()
    root = CACHE / "folders"
    for split, per_class in (("train", "200"), ("test", "50")):
        subprocess.run([sys.executable, str(script), "folders", str(root), "--split", split, "--per-class", per_class],
                       check=True, capture_output=True)
    return root


@pytest.fixture(scope="session")
def tiny_run(cifar_folders: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directory of the session's tiny encoder, trained once through the real CLI (well under a minute)."""
    from typer.testing import CliRunner

    from simclr.cli.app import app

    out = tmp_path_factory.mktemp("tiny") / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(cifar_folders / "train"), "--out", str(out),
                                      *TINY_TRAIN_ARGS])
    assert result.exit_code == 0, result.output
    return out
