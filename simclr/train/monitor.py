"""What a run reports: metrics.jsonl lines, throughput, and the kNN monitor."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from simclr.atomic import atomic_write_text
from simclr.data.datasets import TORCHVISION_DATASETS, labelled_splits
from simclr.evaluate.knn import knn_top1
from simclr.train.config import TrainConfig
from simclr.train.runtime import mixed_precision


class MetricsLog:
    """metrics.jsonl: one JSON object a line. On resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, keep_through_step: int | None) -> None:
        self.path = path
        if keep_through_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_through_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif keep_through_step is None:
            path.write_text("")

    def write(self, record: dict) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


class ThroughputWindow:
    """Steps counted since the window opened; `images_per_second` reads the rate and opens a new window."""

    def __init__(self) -> None:
        self.started, self.steps = time.monotonic(), 0

    def count(self, steps: int) -> None:
        self.steps += steps

    def images_per_second(self, batch_size: int) -> float:
        now = time.monotonic()
        rate = self.steps * batch_size / max(now - self.started, 1e-9)
        self.started, self.steps = now, 0
        return rate


class KnnMonitor:
    """kNN top-1 of the current encoder on a labelled set (train subset as memory, test subset as queries)."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        source = config.knn_data or config.data
        if source not in TORCHVISION_DATASETS and not (Path(source) / "train").is_dir():
            raise ValueError(f"--knn-every needs labelled data: --knn-data cifar10|cifar100|stl10 or a folder with "
                             f"train/ and test/ class folders (got {source})")
        train, test = labelled_splits(source, config.data_root, config.augment.image_size, config.workers)
        self.train = train.subset(config.knn_samples, config.seed)
        self.test = test.subset(max(1, config.knn_samples // 5), config.seed)
        self.num_classes = len(train.classes) or int(train.labels.max()) + 1
        self.image_size = config.augment.image_size
        self.device = device
        self.autocast, _ = mixed_precision(device, config.precision)  # features as training computes them

    def __call__(self, encoder: nn.Module) -> float:
        was_training = encoder.training
        encoder.eval()
        try:
            with self.autocast:
                memory = encode_images(encoder.features, self.train.images, self.image_size, self.device)
                queries = encode_images(encoder.features, self.test.images, self.image_size, self.device)
            return knn_top1(memory, self.train.labels, queries, self.test.labels, self.num_classes)
        finally:
            encoder.train(was_training)


@torch.no_grad()
def encode_images(network, images: torch.Tensor, image_size: int, device: torch.device,
                  batch_size: int = 512) -> torch.Tensor:
    """`network` (float images [n, 3, S, S] in [0, 1] -> [n, ...]) over uint8 images [N, 3, H, W], in batches,
    resized to `image_size` where they differ; float32 on the CPU."""
    rows = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device).float() / 255.0
        if batch.shape[-1] != image_size:
            batch = F.interpolate(batch, size=image_size, mode="bilinear", antialias=True)
        rows.append(network(batch).float().cpu())
    return torch.cat(rows)
