"""Batches of uint8 images for each epoch: seeded, split across ranks, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler

from simclr.data.datasets import ImageFiles, InMemoryImages
from simclr.train import distributed


class ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle per epoch, equal shares per rank) that can skip its first indices."""

    def __init__(self, dataset_size: int, seed: int, epoch: int, skip: int = 0) -> None:
        super().__init__(range(dataset_size), num_replicas=distributed.world_size(), rank=distributed.rank(),
                         shuffle=True, seed=seed, drop_last=True)
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])


def collate_readable(items: list[torch.Tensor | None]) -> torch.Tensor:
    """Stack the decoded images of a batch; slots of unreadable files are refilled with readable images of the
    same batch so every rank keeps the same batch size. A batch with nothing readable is returned empty."""
    readable = [item for item in items if item is not None]
    if not readable:
        return torch.empty(0, dtype=torch.uint8)
    return torch.stack([readable[i % len(readable)] for i in range(len(items))])


def epoch_batches(dataset: ImageFiles | InMemoryImages, sampler: ResumableSampler, batch_size: int, workers: int,
                  seed: int, pin_memory: bool) -> Iterator[torch.Tensor]:
    """uint8 [batch_size, 3, H, W] batches of one epoch (an incomplete last batch is dropped)."""
    if isinstance(dataset, InMemoryImages):
        indices = torch.tensor(list(sampler), dtype=torch.long, device=dataset.images.device)
        for start in range(0, len(indices) - batch_size + 1, batch_size):
            yield dataset.images[indices[start:start + batch_size]]
        return
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                        collate_fn=collate_readable, pin_memory=pin_memory,
                        generator=torch.Generator().manual_seed(seed))
    yield from loader
