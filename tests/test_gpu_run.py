"""bench/gpu_run.sh, the prepared GPU window, end to end on the CPU: the same script on tiny shards, a tiny model to
start from and a budget of seconds, so that no GPU minute goes to debugging it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("n01443537", "n01629819", "n01641577")
RETURN_LIMIT = 8  # files a device call brings back, each at most 16 MiB


def _shard(path: Path, shard: int, per_class: int = 6) -> None:
    """A Tiny-ImageNet-style shard: train/<wnid>/<wnid>_<n>.JPEG, 64 px, each class its own colour."""
    with tarfile.open(path, "w:xz") as archive:
        for label, wnid in enumerate(CLASSES):
            for index in range(per_class):
                rng = np.random.default_rng(100 * shard + 10 * label + index)
                pixels = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
                pixels[..., label] += 170
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG")
                info = tarfile.TarInfo(f"train/{wnid}/{wnid}_{8 * index + shard}.JPEG")
                info.size = buffer.tell()
                buffer.seek(0)
                archive.addfile(info, buffer)


def _run(environment: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_run.sh")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **environment}, cwd=REPO)


@pytest.mark.slow
def test_the_gpu_window_runs_on_the_cpu_and_brings_back_what_it_promises(tiny_repo: Path, tmp_path: Path) -> None:
    carry, work, out = tmp_path / "carry", tmp_path / "work", tmp_path / "out"
    for folder, shards in (("a", (0,)), ("d", (6, 7))):
        (carry / folder).mkdir(parents=True)
        for shard in shards:
            _shard(carry / folder / f"tinyimagenet-train-{shard}.tar.xz", shard)
    settings = {"CARRY": str(carry), "WORK": str(work), "OUT": str(out), "DEVICE": "cpu", "BUDGET": "4",
                "BATCH": "8", "WORKERS": "0", "INIT": str(tiny_repo / "tiny"), "PROFILE_STEPS": "2",
                "MIN_SHARDS": "2", "EXPORT_SIZE": "72", "WARMUP": "1", "PYTHON": sys.executable}

    carried = _run({**settings, "STAGE": "carry"})  # a first call only moves what it carried out of the tree
    assert carried.returncode == 0, carried.stderr[-3000:]
    assert sorted(path.name for path in (work / "train").iterdir()) == ["tinyimagenet-train-0.tar.xz",
                                                                          "tinyimagenet-train-6.tar.xz"]
    assert [path.name for path in (work / "test").iterdir()] == ["tinyimagenet-train-7.tar.xz"]
    assert not out.exists()

    # the throughput stage: the reference and the fast step in one command (compiled modes only on the GPU)
    measured = _run({**settings, "STAGE": "throughput", "MODES": "reference,fast", "THROUGHPUT_STEPS": "1",
                     "REPEATS": "1", "OUT": str(tmp_path / "throughput")})
    assert measured.returncode == 0, measured.stderr[-3000:]
    throughput = json.loads((tmp_path / "throughput" / "train_throughput.json").read_text())["training"]
    assert throughput["preset"] == "photo" and throughput["batch"] == 8 and throughput["flops_per_pair"] > 0
    assert set(throughput["modes"]) == {"reference", "fast"} and throughput["modes"]["fast"]["vs_reference"] > 0

    result = _run(settings)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = sorted(path.name for path in out.iterdir())
    assert len(files) <= RETURN_LIMIT and all((out / name).stat().st_size <= 15 * 2**20 for name in files)
    assert {"figures.json", "profile.json", "metrics.jsonl", "run.log"} <= set(files)

    figures = json.loads((out / "figures.json").read_text())
    assert figures["train"]["steps_run"] > 0 and figures["pairs_per_second"] > 0
    plan = figures["plan"]
    assert plan["time_budget"] == 4 and plan["total_steps"] == figures["train"]["planned_steps"]
    assert figures["train"]["wall_seconds"] <= 4 + 5  # the plan ends inside the budget (a reserve for the save)
    assert figures["init"] == str(tiny_repo / "tiny")
    assert set(figures["probe"]) == {"64", "72"}  # the training size and the export's
    for size, probe in figures["probe"].items():
        assert probe["run"]["n_train"] == 18 and probe["run"]["n_test"] == 18 and 0 <= probe["run"]["knn_top1"] <= 1
        assert probe["default"]["image_size"] == int(size)  # the default's figures at the same size
    assert isinstance(figures["beats_default"], bool) and figures["mfu"] is None  # no peak for a CPU
    assert figures["flops_per_pair"] > 0 and figures["export"]["metadata"]["image_size"] == "72"
    profile = json.loads((out / "profile.json").read_text())
    assert set(profile["regions"]) == {"data", "augment", "forward", "backward", "optimizer"}
    assert profile["regions"]["backward"]["cpu_ms"] > 0

    # The model comes back as tar parts, and opens once joined.
    back = tmp_path / "back"
    back.mkdir()
    joined = b"".join((out / name).read_bytes() for name in files if name.startswith("model.tar.part-"))
    with tarfile.open(fileobj=io.BytesIO(joined)) as archive:
        archive.extractall(back, filter="data")
    encoder = OnnxEncoder(back / "simclr_resnet18_photo_next")
    assert encoder.identity.image_size == 72 and encoder.metadata.train_image_size == 64
    # and so does the run, as a slim checkpoint (what --resume continues from)
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == figures["train"]["steps"] and "optimizer" not in state
