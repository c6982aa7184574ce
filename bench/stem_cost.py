"""Cost per image of each stem of ResNet-18 (full width) at the size it is meant for, against today's CIFAR model.

For each (stem, image size): forward FLOPs of f per image (counted by torch), images/s of f alone (eval, no grad:
what embedding costs) and of a training step (f + g forward and backward with NT-Xent on two views: what
pre-training costs). Baseline in the same run: the CIFAR stem at 32 px, today's default model.

    python bench/stem_cost.py --out bench/results/stem_cost.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import machine, median_rate, write_json
from torch.utils.flop_counter import FlopCounterMode

from simclr.train.config import ModelConfig
from simclr.train.loss import contrastive_step
from simclr.train.model import SimCLRModel

CASES = (("cifar", 32), ("small", 64), ("imagenet", 64), ("cifar", 64))


def forward_flops(model: SimCLRModel, size: int) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.encoder.features(torch.rand(2, 3, size, size))
    return counter.get_total_flops() / 2


def measure(stem: str, size: int, batch: int, steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = SimCLRModel(ModelConfig(stem=stem))
    images = torch.rand(batch, 3, size, size)
    views = torch.rand(2 * batch, 3, size, size)

    def embed() -> int:
        with torch.no_grad():
            for _ in range(steps):
                model.encoder.features(images)
        return steps * batch

    def train_step() -> int:
        for _ in range(steps):
            loss, _ = contrastive_step(model, views, temperature=0.2)
            model.zero_grad(set_to_none=True)
            loss.backward()
        return steps * batch

    model.eval()
    embed()  # warm-up
    embedding = median_rate(embed, repeats)
    model.train()
    train_step()
    training = median_rate(train_step, repeats)
    return {"stem": stem, "image_size": size, "feature_map_side": model.encoder.stem(images[:1]).shape[-1],
            "forward_gflop_per_image": forward_flops(model, size) / 1e9,
            "embed_images_per_s": embedding, "train_pairs_per_s": training}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--steps", type=int, default=3, help="batches per timed run (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    rows = [measure(stem, size, args.batch, args.steps, args.repeats) for stem, size in CASES]
    baseline = rows[0]
    for row in rows:
        row["flops_ratio_to_baseline"] = row["forward_gflop_per_image"] / baseline["forward_gflop_per_image"]
        row["train_speed_ratio_to_baseline"] = (row["train_pairs_per_s"]["median"]
                                                / baseline["train_pairs_per_s"]["median"])
        row["embed_speed_ratio_to_baseline"] = (row["embed_images_per_s"]["median"]
                                                / baseline["embed_images_per_s"]["median"])
    write_json({"benchmark": "stem_cost", "machine": machine(), "arch": "resnet18", "width": 1.0,
                "batch": args.batch, "baseline": "cifar stem at 32 px", "stems": rows}, args.out)


if __name__ == "__main__":
    main()
