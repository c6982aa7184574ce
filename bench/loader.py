"""What `simclr train --data DIR` delivers from a folder of ~87k Tiny ImageNet photos (shards 0-6, 64 px), without
the model: uint8 batches per second, against the on-demand path (a DataLoader decoding every file every epoch, the
trainer's path before folders were decoded once into memory), with the same worker count, in one run.

First epoch: decoding the folder into memory (file reads from the page cache, JPEG decode in worker processes);
later epochs: shuffled batches gathered from memory. A GPU at this per-image cost consumes ~20k images/s (H200).

    python bench/loader.py --out bench/results/loader.json
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from common import REPO, from_shared, machine, median_rate, write_json

from simclr.data.datasets import training_images
from simclr.train.batches import ResumableSampler, epoch_batches

GPU_DEMAND = 20_000  # images/s a ResNet-18 step at 32x32 maps consumes on one H200 (README, GPU training)


def photo_folder(cache: Path = REPO / ".cache" / "tinyimagenet" / "train") -> Path:
    """Tiny ImageNet shards 0-6 as one folder of class folders, written once by ../shared's tinyimagenet.py."""
    from_shared("tinyimagenet/tinyimagenet.py", "folders", str(cache), "--shards", "0-6")
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512, help="images per batch (default 512)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes for both paths (default 2)")
    parser.add_argument("--on-demand-batches", type=int, default=40,
                        help="batches timed per run of the on-demand path (default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    folder = photo_folder()
    decode_runs = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        dataset = training_images(str(folder), None, 64, workers=args.workers, in_memory=True)
        decode_runs.append(len(dataset) / (time.perf_counter() - started))
    epoch = itertools.count()

    def memory_epoch() -> int:
        sampler = ResumableSampler(len(dataset), seed=0, epoch=next(epoch))
        return sum(len(images) for images in epoch_batches(dataset, sampler, args.batch, args.workers, 0, False))

    on_demand = training_images(str(folder), None, 64, workers=args.workers, in_memory=False)

    def on_demand_batches() -> int:
        sampler = ResumableSampler(len(on_demand), seed=0, epoch=next(epoch))
        batches = epoch_batches(on_demand, sampler, args.batch, args.workers, 0, False)
        return sum(len(images) for images in itertools.islice(batches, args.on_demand_batches))

    later, baseline = median_rate(memory_epoch, args.repeats), median_rate(on_demand_batches, args.repeats)
    decode_median = sorted(decode_runs)[len(decode_runs) // 2]
    write_json({"benchmark": "loader", "machine": machine(), "images": len(dataset), "image_size": 64,
                "batch": args.batch, "workers": args.workers, "unit": "images/s",
                "first_epoch_decode_into_memory": {"median": decode_median, "runs": decode_runs},
                "later_epochs_from_memory": later,
                "on_demand_every_epoch": baseline,
                "first_epoch_ratio_to_on_demand": decode_median / baseline["median"],
                "later_epochs_ratio_to_on_demand": later["median"] / baseline["median"],
                "later_epochs_ratio_to_gpu_demand": later["median"] / GPU_DEMAND}, args.out)


if __name__ == "__main__":
    main()
