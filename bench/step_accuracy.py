"""Does the fast step learn what the reference step learns? Loss curves and kNN at equal steps, in one run.

Trains --steps steps on CIFAR-10 three times from the same weights: the reference step in FP32 with seeds 0 and 1
(their difference is the seed-to-seed spread), and the fast step at its default precision (bf16 on CPUs with native
bf16, else fp32) with seed 0. Reports the loss in windows of --window steps, the largest window difference of the
fast step from the reference (seed 0) against the spread, and each run's kNN top-1 (k=200, cosine, on --knn-samples
CIFAR-10 train images as memory and a fifth as many test images).

    python bench/step_accuracy.py --out bench/results/step_accuracy.json
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from common import cifar_root, machine, write_json

from simclr.train.config import build_config
from simclr.train.loop import Trainer
from simclr.train.monitor import KnnMonitor
from simclr.train.runtime import resolve_precision


def run(kind: str, seed: int, precision: str, args: argparse.Namespace, root: Path) -> dict:
    config = build_config("cifar", {"data": "cifar10", "data_root": str(root), "batch_size": args.batch,
                                    "workers": 2, "device": "cpu", "epochs": 1000, "model.width": args.width,
                                    "augment.image_size": 32, "train_step": kind, "precision": precision,
                                    "knn_samples": args.knn_samples, "knn_data": "cifar10", "seed": seed})
    trainer = Trainer(config, Path("unused"), torch.device("cpu"), resume=False)
    torch.manual_seed(0)  # the same initial weights for every run; the seed changes the data order and views
    trainer.model.load_state_dict(type(trainer.model)(config.model).state_dict())
    batches = itertools.chain.from_iterable(trainer.batches(epoch, 0) for epoch in itertools.count())
    losses = [trainer.train_step(next(batches))[0] for _ in range(args.steps)]
    curve = torch.stack(losses).float().tolist()
    windows = [sum(curve[i:i + args.window]) / len(curve[i:i + args.window]) for i in range(0, len(curve),
                                                                                             args.window)]
    knn = KnnMonitor(config, torch.device("cpu"))(trainer.model.encoder)
    return {"step": kind, "seed": seed, "precision": resolve_precision(torch.device("cpu"), precision),
            "loss_windows": windows, "knn_top1": knn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="steps per run (default 300)")
    parser.add_argument("--batch", type=int, default=64, help="pairs per step (default 64)")
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 width (default 0.25)")
    parser.add_argument("--window", type=int, default=25, help="steps per loss window (default 25)")
    parser.add_argument("--knn-samples", type=int, default=5000, help="kNN memory images (default 5000)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    root = cifar_root()
    reference, other_seed = (run("reference", seed, "fp32", args, root) for seed in (0, 1))
    fast = run("fast", 0, "auto", args, root)

    def largest_gap(a: dict, b: dict) -> float:
        return max(abs(x - y) for x, y in zip(a["loss_windows"], b["loss_windows"], strict=True))

    spread, gap = largest_gap(reference, other_seed), largest_gap(fast, reference)
    write_json({"benchmark": "step_accuracy", "machine": machine(), "steps": args.steps, "batch": args.batch,
                "width": args.width, "runs": [reference, other_seed, fast],
                "seed_spread_loss": spread, "fast_vs_reference_loss": gap, "loss_within_spread": gap <= spread,
                "knn_difference_points": 100 * (fast["knn_top1"] - reference["knn_top1"]),
                "knn_within_1_point": abs(fast["knn_top1"] - reference["knn_top1"]) <= 0.01}, args.out)


if __name__ == "__main__":
    main()
