"""Helpers the benchmarks share: timing with medians, machine description, CIFAR-10 location, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def from_shared(script: str, *args: str) -> None:
    """Materialise part of a ../shared/data copy, or stop the benchmark with the reason."""
    from simclr.data.shared import write_from_shared

    try:
        write_from_shared(script, *args)
    except FileNotFoundError as missing:
        sys.exit(f"bench: {missing}")


def cifar_root(cache: Path = REPO / ".cache" / "data") -> Path:
    """cifar-10-batches-py written by ../shared/data/cifar10.py into `cache` (once)."""
    from_shared("cifar10.py", "batches", str(cache))
    return cache


def reference_model(work: Path) -> Path:
    """A ResNet-18 (CIFAR stem, 32 px, full width) trained for one step on a few images (speed does not depend on
    the weights), in work/run, exported as model `dynamic` of the repository work/repo, which is returned."""
    import numpy as np
    from PIL import Image

    from simclr.export.repository import ServingOptions, export_to_repository
    from simclr.train.config import build_config
    from simclr.train.loop import train

    images = work / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(16):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{index}.png")
    config = build_config("cifar", {"data": str(images), "batch_size": 8, "max_steps": 1, "workers": 0,
                                    "device": "cpu"})
    train(config, work / "run")
    export_to_repository(work / "run", work / "repo", "dynamic", ServingOptions(max_batch_size=256))
    return work / "repo"


def flops_per_pair(model: torch.nn.Module, image_size: int, temperature: float, pairs: int = 4) -> float:
    """FLOPs of one training pair (forward and backward of its two views through f and g, and the loss), counted by
    torch.utils.flop_counter on `pairs` random pairs on the CPU (the count does not depend on the device)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from simclr.train.loss import contrastive_step

    model = copy.deepcopy(model).float().cpu().train()
    views = torch.rand(2 * pairs, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        loss, _ = contrastive_step(model, views, temperature)
        loss.backward()
    return counter.get_total_flops() / pairs


# Dense bf16/fp16 tensor-core peaks (the vendors' datasheets, SXM parts), by a substring of the device name.
PEAKS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.05e12, "A10G": 125e12}


def card_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    """A CUDA card's dense bf16/fp16 peak FLOP/s (None where unknown), and what it is."""
    if device.type != "cuda":
        return None, "no peak for a CPU"
    name = torch.cuda.get_device_name(device)
    if precision not in ("bf16", "fp16"):
        return None, f"{name}: peaks are known for bf16/fp16 only"
    peak = next((flops for key, flops in PEAKS.items() if key in name), None)
    return peak, f"{name}: dense {precision} peak" if peak else f"{name}: peak unknown"


def median_rate(run: Callable[[], int], repeats: int) -> dict:
    """Call `run` (which returns how many items it processed) `repeats` times; items/s per run and their median."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        items = run()
        rates.append(items / (time.perf_counter() - started))
    return {"median": statistics.median(rates), "runs": rates}


def machine() -> dict:
    """The processor (name, family/model, the vector ISA that decides its speed), cores, torch, and the GPU."""
    fields = {}
    with open("/proc/cpuinfo") as file:
        for line in file:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    info = {"cpu": fields.get("model name", platform.processor() or platform.machine()),
            "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
            "isa": [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags],
            "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(payload: dict, out: Path | None) -> None:
    text = json.dumps(payload, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
