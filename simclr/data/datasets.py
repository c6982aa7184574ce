"""Training and evaluation image sets, all yielding uint8 CHW tensors of one fixed size."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from simclr.data.images import find_images, try_load_image

log = logging.getLogger("simclr")

TORCHVISION_DATASETS = ("cifar10", "cifar100", "stl10")


@dataclass(frozen=True)
class InMemoryImages:
    """A whole image set held as one tensor: images uint8 [N, 3, H, W], labels int64 [N] (-1 = unlabelled)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, count: int, seed: int) -> InMemoryImages:
        """A seeded random subset of at most `count` images."""
        if count >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count]
        return InMemoryImages(self.images[keep], self.labels[keep], self.classes)


class ImageFiles(Dataset):
    """Image files decoded on demand to uint8 [3, size, size]; an unreadable file yields None and one warning."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths = paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | None:
        array = try_load_image(self.paths[index], self.size)
        return None if array is None else torch.from_numpy(array).permute(2, 0, 1).contiguous()


def training_images(data: str, data_root: Path | None, size: int) -> ImageFiles | InMemoryImages:
    """The unlabelled training set: a torchvision data set name (cifar10, cifar100, stl10) or a folder of images."""
    if data in TORCHVISION_DATASETS:
        return torchvision_split(data, _require_root(data, data_root), train=True, unlabeled=True)
    if not Path(data).is_dir():
        names = ", ".join(TORCHVISION_DATASETS)
        raise FileNotFoundError(f"--data {data}: no such folder (or name a data set: {names})")
    return ImageFiles(find_images(Path(data)), size)


def labelled_splits(data: str, data_root: Path | None, size: int) -> tuple[InMemoryImages, InMemoryImages]:
    """Labelled (train, test) splits: a torchvision data set name, or a folder holding train/ and test/ trees."""
    if data in TORCHVISION_DATASETS:
        root = _require_root(data, data_root)
        return torchvision_split(data, root, train=True), torchvision_split(data, root, train=False)
    folder = Path(data)
    train = labelled_folder(folder / "train", size)
    return train, labelled_folder(folder / "test", size, classes=train.classes)


def labelled_folder(root: Path, size: int, classes: tuple[str, ...] | None = None) -> InMemoryImages:
    """An ImageFolder tree decoded into memory; the class is the first folder below `root`."""
    relative = [path.relative_to(root).parts for path in find_images(root)]
    names = classes or tuple(sorted({parts[0] for parts in relative if len(parts) > 1}))
    index = {name: i for i, name in enumerate(names)}
    images, labels = [], []
    for parts in relative:
        if len(parts) < 2 or parts[0] not in index:
            continue
        path = root.joinpath(*parts)
        array = try_load_image(path, size)
        if array is not None:
            images.append(array)
            labels.append(index[parts[0]])
    if not images:
        raise ValueError(f"{root}: no readable images in class folders")
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return InMemoryImages(tensor, torch.tensor(labels), names)


def torchvision_split(name: str, root: Path, train: bool, unlabeled: bool = False) -> InMemoryImages:
    """CIFAR-10/100 or STL-10 read from `root` by torchvision (STL-10 train+unlabeled when `unlabeled`)."""
    if name == "stl10":
        from torchvision.datasets import STL10

        split = ("train+unlabeled" if unlabeled else "train") if train else "test"
        dataset = STL10(str(root), split=split, download=False)
        return InMemoryImages(torch.from_numpy(dataset.data), torch.from_numpy(dataset.labels).long(),
                              tuple(dataset.classes))
    dataset = _load_cifar(name, root, train)
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return InMemoryImages(images, torch.tensor(dataset.targets), tuple(dataset.classes))


def _load_cifar(name: str, root: Path, train: bool):
    from torchvision.datasets import CIFAR10, CIFAR100

    official = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        return official(str(root), train=train, download=False)
    except RuntimeError:
        pass
    # Re-encoded copies (like the JPEG-decoded CIFAR-10 used in development) fail the md5 check of the official
    # files; read the same documented layout without it, and say so.
    unchecked = type(
        f"Unchecked{official.__name__}",
        (official,),
        {
            "train_list": [[file, None] for file, _ in official.train_list],
            "test_list": [[file, None] for file, _ in official.test_list],
            "meta": {**official.meta, "md5": None},
        },
    )
    try:
        dataset = unchecked(str(root), train=train, download=False)
    except RuntimeError:
        raise FileNotFoundError(
            f"--data-root {root}: no {name} found (expected {root / official.base_folder}/ in torchvision's layout)"
        ) from None
    log.warning("%s in %s differs from the official files (md5); loaded without the check", name, root)
    return dataset


def _require_root(data: str, data_root: Path | None) -> Path:
    if data_root is None:
        raise ValueError(f"--data {data} needs --data-root DIR (the folder holding torchvision's {data} files)")
    return Path(data_root)
