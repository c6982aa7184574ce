"""Which images a run trains on, so that a resumed run can find them in another place and know they are the same;
and a few of them to check a starting model against."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from simclr.data.datasets import ImageFiles, InMemoryImages, training_image_names


def data_fingerprint(data: str) -> dict | None:
    """{"images": count, "sha256": digest of the sorted relative paths} of a folder or shards of images; None
    for a torchvision data set (cifar10, ...), which is the same wherever its root is."""
    names = training_image_names(data)
    if not names:
        return None
    return {"images": len(names), "sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}


def check_same_images(saved: dict | None, current: dict | None, saved_data: str, data: str) -> None:
    """Refuse (ValueError, one line) to resume on other images than the run's: when --data names another place,
    its images must have the run's count and relative paths."""
    if saved is not None and saved == current:
        return
    if saved is None and data == saved_data:  # a torchvision set, or a checkpoint from before fingerprints
        return
    if saved is None or current is None:
        raise ValueError(f"--data {data}: the run was trained on {saved_data}, and there is no way to check that "
                         "these are the same images; resume with its own --data")
    raise ValueError(f"--data {data}: {current['images']} images (paths digest {current['sha256'][:12]}), but the "
                     f"run was trained on {saved['images']} images at {saved_data} (digest {saved['sha256'][:12]}): "
                     "give the folder that holds the run's images")


def sample_images(dataset: ImageFiles | InMemoryImages, size: int, count: int = 64) -> torch.Tensor:
    """The first `count` readable images of the training set as uint8 [n, 3, size, size] on the CPU."""
    if isinstance(dataset, InMemoryImages):
        images = dataset.images[:count].cpu()
    else:
        images = torch.stack([image for image in (dataset[i] for i in range(min(len(dataset), 4 * count)))
                              if image is not None][:count])
    if images.shape[-1] != size:
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images
