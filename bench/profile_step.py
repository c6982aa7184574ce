"""Where a training step's time goes: a few steps of `simclr train` under torch.profiler, with pairs/s and MFU.

Builds the trainer `simclr train` would build (the same preset, data, --init, batch and device), runs --warmup steps,
times --steps more (pairs/s), then profiles --steps again. Per step: the time in the trainer's regions (data: waiting
for the next batch; augment; forward; backward, which includes the loss's sync; optimizer) on the CPU side and on the
device; the device's busy time (its kernels) and idle time (the step's wall time less that). FLOPs per pair are
counted by torch.utils.flop_counter (forward and backward of two views); MFU divides the achieved FLOP/s by the
card's dense bf16/fp16 peak (H100 and H200 SXM: 989.4 TFLOP/s; none on a CPU or an unknown card).

    python bench/profile_step.py --data SHARD_OR_FOLDER --init model_repository/simclr_resnet18_photo \\
        --batch-size 1024 --device cuda --out profile.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import card_peak, flops_per_pair, machine, write_json
from torch.profiler import ProfilerActivity, profile, record_function

from simclr.train.config import PRESETS, build_config
from simclr.train.loop import Trainer, init_model_settings
from simclr.train.runtime import resolve_device, resolve_precision

REGIONS = ("data", "augment", "forward", "backward", "optimizer")
def steps_of(trainer: Trainer):
    """The trainer's batches, epoch after epoch, each fetched inside a `data` region."""
    epoch = 0
    while True:
        batches = trainer.batches(epoch, 0)
        while True:
            with record_function("data"):
                images = next(batches, None)
            if images is None:
                break
            yield images
        epoch += 1


def timed(trainer: Trainer, batches, steps: int, device: torch.device) -> float:
    """Seconds for `steps` steps, the device synchronised at both ends."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(next(batches))
    synchronize()
    return time.perf_counter() - started


def region_times(prof, steps: int) -> dict:
    """Milliseconds per step in each region (CPU side and device side), and the device's busy time."""
    averages = {event.key: event for event in prof.key_averages()}
    regions = {}
    for name in REGIONS:
        event = averages.get(name)
        regions[name] = {"cpu_ms": event.cpu_time_total / 1e3 / steps if event else 0.0,
                         "device_ms": getattr(event, "device_time_total", 0.0) / 1e3 / steps if event else 0.0}
    kernels = sum(getattr(event, "self_device_time_total", 0.0) for event in averages.values()
                  if event.key not in REGIONS)
    return {"regions": regions, "device_busy_ms": kernels / 1e3 / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="training images, as simclr train --data takes them")
    parser.add_argument("--preset", default="photo", choices=PRESETS, help="recipe (default photo)")
    parser.add_argument("--init", default=None, help="start from this model, as simclr train --init (default: none)")
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch (default 1024)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes for folder data (default 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile f, g and the loss, as simclr train (default: on for CUDA)")
    parser.add_argument("--warmup", type=int, default=10, help="steps before timing (default 10)")
    parser.add_argument("--steps", type=int, default=30, help="steps timed, then as many profiled (default 30)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    overrides = {"data": args.data, "batch_size": args.batch_size, "workers": args.workers, "device": args.device,
                 "compile": args.compile, "init": args.init, "epochs": 1000}
    if args.init:
        overrides.update(init_model_settings(Path(args.init), overrides))
    config = build_config(args.preset, overrides)
    device = resolve_device(config.device)
    with tempfile.TemporaryDirectory(prefix="profile-step-") as work:
        started = time.perf_counter()
        trainer = Trainer(config, Path(work), device, resume=False)
        setup_seconds = time.perf_counter() - started
        batches = steps_of(trainer)
        warmup_seconds = timed(trainer, batches, args.warmup, device)
        seconds = timed(trainer, batches, args.steps, device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            profiled_seconds = timed(trainer, batches, args.steps, device)
    pairs_per_second = args.steps * config.batch_size / seconds
    flops = flops_per_pair(trainer.model, config.augment.image_size, config.temperature)
    precision = resolve_precision(device, config.precision)
    peak, peak_basis = card_peak(device, precision)
    step_ms = 1e3 * profiled_seconds / args.steps
    times = region_times(prof, args.steps)
    payload = {
        "benchmark": "profile_step", "machine": machine(), "device": str(device),
        "config": {"preset": config.preset, "data": config.data, "init": config.init, "batch_size": config.batch_size,
                   "image_size": config.augment.image_size, "precision": precision,
                   "channels_last": trainer.memory_format == torch.channels_last, "compile": trainer.compiling,
                   "arch": config.model.arch, "width": config.model.width, "stem": config.model.stem},
        "setup_seconds": setup_seconds, "warmup_steps": args.warmup, "warmup_seconds": warmup_seconds,
        "steps": args.steps, "pairs_per_second": pairs_per_second,
        "step_ms": 1e3 * seconds / args.steps, "profiled_step_ms": step_ms,
        **times, "device_idle_ms": step_ms - times["device_busy_ms"] if device.type == "cuda" else None,
        "flops_per_pair": flops, "achieved_tflops": pairs_per_second * flops / 1e12,
        "peak_flops": peak, "peak_basis": peak_basis, "mfu": pairs_per_second * flops / peak if peak else None,
    }
    write_json(payload, args.out)


if __name__ == "__main__":
    main()
