"""Training throughput of one SimCLR step, today's reference step against the fast step, in one run.

(a) augmentation alone: two-view images/s of simclr's batched uint8 pipeline (one pass over both views) against
    per-image PIL + torchvision transforms;
(b) a whole step, pairs/s, for each --modes entry, on the same preset, batch and image size:
    reference   simclr's earlier step (per-view augmentation, a host sync per step, LARS one tensor at a time)
    fast        the default step (both views in one pass, no host sync, multi-tensor LARS), not compiled
    compiled    the fast step under torch.compile (the default on CUDA; its compile time is reported apart)
    compiled-cl the compiled step in channels_last (the default on CUDA; opt-in on a CPU: --channels-last)
    cudagraphs  the compiled step with mode="reduce-overhead" (CUDA only)
    lightly     lightly's SimCLR recipe: its SimCLRTransform in a DataLoader with --workers, a torchvision ResNet-18
                with the CIFAR stem, its SimCLRProjectionHead, NTXentLoss and LARS (CPU only; pip install lightly)
    Each mode: pairs/s (median of --repeats runs of --steps steps, the device synchronised at both ends), ratios
    against reference and lightly, FLOPs per pair (torch.utils.flop_counter) and the fraction of the peak (a GPU's
    dense bf16 datasheet peak; a CPU's nominal FP32 peak).

    python bench/train_throughput.py --out bench/results/train_throughput.json                 # CPU, CIFAR-10
    python bench/train_throughput.py --device cuda --preset photo --data SHARD --batch 1024 \\
        --modes reference,fast,compiled,cudagraphs --out train_throughput_gpu.json                 # GPU
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import card_peak, cifar_root, flops_per_pair, machine, median_rate, write_json
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from simclr.data.datasets import torchvision_split
from simclr.train.augment import TwoViews, simclr_augmentation
from simclr.train.config import build_config
from simclr.train.loop import Trainer
from simclr.train.runtime import native_cpu_bf16, resolve_device, resolve_precision

TRAINER_MODES = {"reference": {"train_step": "reference", "compile": False},
                 "fast": {"train_step": "fast", "compile": False},
                 "compiled": {"train_step": "fast", "compile": True},
                 "compiled-cl": {"train_step": "fast", "compile": True, "channels_last": True},
                 "cudagraphs": {"train_step": "fast", "compile": True, "compile_mode": "reduce-overhead"}}


def pil_transform(size: int) -> transforms.Compose:
    """The per-image path most SimCLR code uses (cifar preset: s = 0.5, no blur)."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.08, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.ToTensor(),
    ])


def bench_augmentation(images_nhwc: np.ndarray, batch: int, repeats: int) -> dict:
    images_nchw = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()
    config = build_config("cifar", {})
    two_views = TwoViews(simclr_augmentation(config.augment, torch.Generator().manual_seed(0)))
    transform = pil_transform(config.augment.image_size)
    batches = [slice(start, start + batch) for start in range(0, len(images_nhwc) - batch + 1, batch)]

    def ours() -> int:
        for part in batches:
            two_views(images_nchw[part])
        return 2 * len(batches) * batch

    def pil() -> int:
        for part in batches:
            torch.stack([transform(Image.fromarray(array)) for array in images_nhwc[part] for _ in range(2)])
        return 2 * len(batches) * batch

    baseline, simclr = median_rate(pil, repeats), median_rate(ours, repeats)
    return {"unit": "views/s", "pil_torchvision": baseline, "simclr": simclr,
            "ratio": simclr["median"] / baseline["median"]}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_mode(mode: str, overrides: dict, preset: str, steps: int, repeats: int,
                 warmup: int) -> tuple[dict, Trainer]:
    """pairs/s of simclr's trainer in `mode`, after `warmup` untimed steps (compilation among them)."""
    config = build_config(preset, {**overrides, **TRAINER_MODES[mode]})
    device = resolve_device(config.device)
    trainer = Trainer(config, Path("unused"), device, resume=False)  # only train_step is used: nothing is written

    def endless():
        for epoch in itertools.count():
            yield from trainer.batches(epoch, 0)

    batches = endless()
    started = time.perf_counter()
    trainer.train_step(next(batches))
    synchronize(device)
    first_step = time.perf_counter() - started
    for _ in range(warmup - 1):
        trainer.train_step(next(batches))

    def run() -> int:
        synchronize(device)
        values = [trainer.train_step(next(batches)) for _ in range(steps)]
        float(values[-1][0])  # what the loop reads every --log-every steps
        synchronize(device)
        return steps * config.batch_size

    result = median_rate(run, repeats)
    result.update(first_step_seconds=first_step, precision=resolve_precision(device, config.precision),
                  channels_last=trainer.memory_format == torch.channels_last)
    return result, trainer


class LightlyPairs(Dataset):
    """uint8 images as PIL images, each returned as lightly's two SimCLRTransform views."""

    def __init__(self, images: np.ndarray, size: int) -> None:
        from lightly.transforms import SimCLRTransform

        self.images = images
        self.transform = SimCLRTransform(input_size=size, cj_strength=0.5, gaussian_blur=0.0)  # the cifar recipe

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(self.transform(Image.fromarray(self.images[index])))


def lightly_mode(images_nhwc: np.ndarray, config, steps: int, repeats: int, workers: int) -> dict:
    """pairs/s of lightly's SimCLR recipe on the CPU (its transform, head, loss and LARS; a torchvision ResNet-18)."""
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.utils.lars import LARS

    torch.manual_seed(0)
    backbone = torchvision.models.resnet18()
    backbone.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem
    backbone.maxpool, backbone.fc = torch.nn.Identity(), torch.nn.Identity()
    model = torch.nn.Sequential(backbone, SimCLRProjectionHead(512, 512, 128))
    criterion = NTXentLoss(temperature=config.temperature)
    optimizer = LARS(model.parameters(), lr=0.3 * config.batch_size / 256, momentum=0.9, weight_decay=1e-6)
    loader = DataLoader(LightlyPairs(images_nhwc, config.augment.image_size), batch_size=config.batch_size,
                        shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    batches = iter(itertools.cycle(loader))

    def run() -> int:
        for view1, view2 in itertools.islice(batches, steps):
            z = model(torch.cat([view1, view2]))
            loss = criterion(z[:config.batch_size], z[config.batch_size:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return steps * config.batch_size

    run()  # warm-up: worker start, allocator
    return median_rate(run, repeats)


def nominal_peak(flops_per_cycle: int) -> float:
    """Cores x base clock (from /proc/cpuinfo) x FP32 FLOPs per cycle per core."""
    with open("/proc/cpuinfo") as file:
        megahertz = next(float(line.split(":")[1]) for line in file if line.startswith("cpu MHz"))
    return (os.cpu_count() or 1) * megahertz * 1e6 * flops_per_cycle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--preset", default="cifar", choices=("cifar", "photo"), help="recipe (default cifar)")
    parser.add_argument("--data", default=None, help="training images for (b) (default: CIFAR-10 from ../shared)")
    parser.add_argument("--modes", default="reference,fast,lightly",
                        help="comma-separated, of reference, fast, compiled, compiled-cl, cudagraphs, lightly "
                             "(default reference,fast,lightly)")
    parser.add_argument("--batch", type=int, default=64, help="pairs per step (default 64)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed run (default 8)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing each mode (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes / DataLoader workers (default 2)")
    parser.add_argument("--augment-images", type=int, default=2048, help="images for (a); 0 skips it (default 2048)")
    parser.add_argument("--flops-per-cycle", type=int, default=32,
                        help="a CPU's FP32 FLOPs per cycle per core for its nominal peak (default 32: two 256-bit FMA "
                             "pipes, AVX2 cores such as Zen 3; 64 for two 512-bit pipes)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = set(modes) - {*TRAINER_MODES, "lightly"}
    if unknown:
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}")

    root = cifar_root() if args.data is None or args.augment_images or "lightly" in modes else None
    cifar = torchvision_split("cifar10", root, train=True).images if root else None
    payload = {"benchmark": "train_throughput", "machine": machine(), "cpu_native_bf16": native_cpu_bf16()}
    if args.augment_images:
        sample = cifar[: args.augment_images].permute(0, 2, 3, 1).numpy().copy()
        payload["augmentation"] = bench_augmentation(sample, args.batch, args.repeats)

    overrides = {"data": args.data or "cifar10", "data_root": None if args.data else str(root),
                 "batch_size": args.batch, "workers": args.workers, "device": args.device, "epochs": 1000,
                 "optim.warmup_epochs": 0.0, "log_every": 10**9}
    results, model, config = {}, None, build_config(args.preset, overrides)
    for mode in modes:
        if mode == "lightly":
            images = cifar.permute(0, 2, 3, 1).numpy()
            results[mode] = lightly_mode(images, config, args.steps, args.repeats, args.workers)
        else:
            results[mode], trainer = trainer_mode(mode, overrides, args.preset, args.steps, args.repeats, args.warmup)
            model = trainer.model
            del trainer
    device = resolve_device(args.device)
    flops = flops_per_pair(model, config.augment.image_size, config.temperature) if model is not None else None
    precision = resolve_precision(device, config.precision)
    peak, basis = card_peak(device, precision)
    if device.type == "cpu":
        peak, basis = nominal_peak(args.flops_per_cycle), (f"{os.cpu_count()} cores x base clock x "
                                                           f"{args.flops_per_cycle} FP32 FLOP/cycle")
    for name, result in results.items():
        if flops:
            result["achieved_tflops"] = result["median"] * flops / 1e12
            result["fraction_of_peak"] = result["median"] * flops / peak if peak else None
        for baseline in ("reference", "lightly"):
            if baseline in results and baseline != name:
                result[f"vs_{baseline}"] = result["median"] / results[baseline]["median"]
    payload["training"] = {"unit": "pairs/s", "preset": args.preset, "data": overrides["data"], "batch": args.batch,
                           "image_size": config.augment.image_size, "steps_per_run": args.steps,
                           "workers": args.workers, "device": str(device), "flops_per_pair": flops,
                           "peak_flops": peak, "peak_basis": basis, "modes": results}
    write_json(payload, args.out)


if __name__ == "__main__":
    main()
