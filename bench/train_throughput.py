"""Training throughput of ResNet-18 (CIFAR stem, 32 px) against the plain PIL + torchvision path, in one run.

(a) augmentation alone: two views/s of simclr's batched uint8 pipeline vs per-image PIL + torchvision transforms;
(b) end to end: training pairs/s of simclr's trainer vs a plain loop (the PIL path in a DataLoader with the same
    worker count, the same model, loss and optimiser), plus the fraction of the machine's FLOP peak a step reaches.

    python bench/train_throughput.py --out bench/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import cifar_root, flops_per_pair, machine, median_rate, write_json
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from simclr.data.datasets import torchvision_split
from simclr.train.augment import TwoViews, simclr_augmentation
from simclr.train.batches import ResumableSampler, epoch_batches
from simclr.train.config import build_config
from simclr.train.loop import Trainer
from simclr.train.loss import nt_xent
from simclr.train.model import SimCLRModel
from simclr.train.optim import build_optimizer


def pil_transform() -> transforms.Compose:
    """The per-image path most SimCLR code uses (cifar preset: s = 0.5, no blur)."""
    return transforms.Compose([
        transforms.RandomResizedCrop(32, scale=(0.08, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.ToTensor(),
    ])


class PilPairs(Dataset):
    """CIFAR images as PIL images, each returned as two augmented views."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.transform = pil_transform()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.fromarray(self.images[index])
        return self.transform(image), self.transform(image)


def bench_augmentation(images_nhwc: np.ndarray, batch: int, repeats: int) -> dict:
    images_nchw = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()
    config = build_config("cifar", {})
    two_views = TwoViews(simclr_augmentation(config.augment, torch.Generator().manual_seed(0)))
    transform = pil_transform()
    batches = [slice(start, start + batch) for start in range(0, len(images_nhwc) - batch + 1, batch)]

    def ours() -> int:
        for part in batches:
            two_views(images_nchw[part])
        return 2 * len(batches) * batch

    def pil() -> int:
        for part in batches:
            views = [transform(Image.fromarray(array)) for array in images_nhwc[part] for _ in range(2)]
            torch.stack(views)
        return 2 * len(batches) * batch

    baseline, simclr = median_rate(pil, repeats), median_rate(ours, repeats)
    return {"unit": "views/s", "pil_torchvision": baseline, "simclr": simclr,
            "ratio": simclr["median"] / baseline["median"]}


def bench_training(root: Path, batch: int, steps: int, repeats: int, workers: int) -> dict:
    config = build_config("cifar", {"data": "cifar10", "data_root": str(root), "batch_size": batch,
                                    "workers": workers, "device": "cpu", "model.arch": "resnet18", "epochs": 1,
                                    "optim.warmup_epochs": 0.0})
    trainer = Trainer(config, Path("unused"), torch.device("cpu"), resume=False)  # only train_step is used
    batches = epoch_batches(trainer.dataset, ResumableSampler(len(trainer.dataset), 0, 0), batch, workers, 0, False)

    def ours() -> int:
        for images in itertools.islice(batches, steps):
            trainer.train_step(images)
        return steps * batch

    # The plain loop: PIL path in a DataLoader, same model, loss and optimiser.
    torch.manual_seed(0)
    model = SimCLRModel(config.model)
    optimizer = build_optimizer(model, config.optim, batch)
    for group in optimizer.param_groups:
        group["lr"] = trainer.schedule[0]
    loader = DataLoader(PilPairs(trainer.dataset.images.permute(0, 2, 3, 1).numpy()), batch_size=batch,
                        shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    plain_batches = iter(itertools.cycle(loader))

    def plain() -> int:
        for view1, view2 in itertools.islice(plain_batches, steps):
            z = model(torch.cat([view1, view2]))
            loss = nt_xent(z[:batch], z[batch:], config.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return steps * batch

    ours(), plain()  # warm-up: worker start, allocator
    baseline, simclr = median_rate(plain, repeats), median_rate(ours, repeats)

    step_flops = flops_per_pair(model, 32, config.temperature, batch) * batch  # forward + backward of 2 x batch
    achieved = step_flops * simclr["median"] / batch
    return {"unit": "pairs/s", "batch": batch, "steps_per_run": steps, "workers": workers,
            "plain_loop": baseline, "simclr": simclr, "ratio": simclr["median"] / baseline["median"],
            "step_gflop": step_flops / 1e9, "achieved_gflops": achieved / 1e9}


def gemm_peak(size: int = 2048, repeats: int = 5) -> float:
    """Measured FP32 matrix-multiply FLOP/s of torch.matmul (for reference beside the nominal peak)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / sorted(times)[len(times) // 2]


def nominal_peak(flops_per_cycle: int) -> float:
    """Cores x base clock (from /proc/cpuinfo) x FP32 FLOPs per cycle per core."""
    with open("/proc/cpuinfo") as file:
        megahertz = next(float(line.split(":")[1]) for line in file if line.startswith("cpu MHz"))
    return (os.cpu_count() or 1) * megahertz * 1e6 * flops_per_cycle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed run (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for both paths (default 2)")
    parser.add_argument("--augment-images", type=int, default=2048, help="images for (a) (default 2048)")
    parser.add_argument("--flops-per-cycle", type=int, default=64,
                        help="FP32 FLOPs per cycle per core for the nominal peak (default 64: two 512-bit FMA pipes, "
                             "as AMD Zen 5 and Intel AVX-512 server cores; use 32 for AVX2-only or Zen 4)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    root = cifar_root()
    images = torchvision_split("cifar10", root, train=True).images[: args.augment_images].permute(0, 2, 3, 1)
    augmentation = bench_augmentation(images.numpy().copy(), args.batch, args.repeats)
    training = bench_training(root, args.batch, args.steps, args.repeats, args.workers)
    if not torch.cuda.is_available():
        peak, gemm = nominal_peak(args.flops_per_cycle), gemm_peak()
        training["nominal_peak_gflops"] = peak / 1e9
        training["nominal_peak_basis"] = f"{os.cpu_count()} cores x base clock x {args.flops_per_cycle} FLOP/cycle"
        training["fraction_of_nominal_peak"] = training["achieved_gflops"] * 1e9 / peak
        training["torch_sgemm_gflops"] = gemm / 1e9
    write_json({"benchmark": "train_throughput", "machine": machine(), "augmentation": augmentation,
                "training": training}, args.out)


if __name__ == "__main__":
    main()
