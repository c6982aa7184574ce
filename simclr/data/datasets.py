"""Training and evaluation image sets, all yielding uint8 CHW tensors of one fixed size."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from simclr.data.cifar import load_cifar
from simclr.data.decoding import decode_chunks
from simclr.data.images import class_of, find_images, try_load_image
from simclr.data.tar_shards import decode_shards, shard_files, shard_image_names
from simclr.progress import progress_bar

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


def training_images(data: str, data_root: Path | None, size: int, workers: int = 2,
                    in_memory: bool | None = None) -> ImageFiles | InMemoryImages:
    """The unlabelled training set, uint8 [N, 3, size, size]: a torchvision data set name (cifar10, cifar100,
    stl10), a folder of images, or tar shards (see `shard_files`: a .tar/.tar.gz/.tar.xz file, a folder of them,
    or a comma-separated list of shard files and folders of shards).

    A folder is decoded once into memory (`in_memory` None: when the uint8 images take at most half of the memory
    available now), so later epochs cost no decoding; otherwise its files are decoded on demand every epoch.
    Shards are always decoded into memory, `workers` shards at a time, in sorted shard order then member order.
    """
    if data in TORCHVISION_DATASETS:
        return torchvision_split(data, _require_root(data, data_root), train=True, unlabeled=True)
    shards = shard_files(data)
    if shards is not None:
        return _shard_images(data, shards, size, workers, in_memory)
    if not Path(data).is_dir():
        names = ", ".join(TORCHVISION_DATASETS)
        raise FileNotFoundError(f"--data {data}: no such folder (or name a data set: {names})")
    paths = find_images(Path(data))
    needed = len(paths) * 3 * size * size
    if in_memory is None:
        in_memory = needed <= available_memory() // 2
    if not in_memory:
        log.info("%s: %d images decoded on demand each epoch (%.1f GB decoded)", data, len(paths), needed / 1e9)
        return ImageFiles(paths, size)
    images, _ = decode_images(paths, size, workers, f"decoding {Path(data).name}")
    if not len(images):
        raise ValueError(f"--data {data}: none of its {len(paths)} image files could be decoded")
    return InMemoryImages(images, torch.full((len(images),), -1, dtype=torch.long))


def training_image_names(data: str) -> list[str]:
    """The images that `training_images` reads from `data`, in its order, named independently of where the data
    lie: for a folder, the paths below it (posix); for shards, "<shard file name>/<member name>" (one streaming
    pass over each shard). [] for a torchvision data set name (cifar10, ...)."""
    if data in TORCHVISION_DATASETS:
        return []
    shards = shard_files(data)
    if shards is not None:
        return [f"{shard.name}/{name}" for shard in shards for name in shard_image_names(shard)]
    if not Path(data).is_dir():
        raise FileNotFoundError(f"--data {data}: no such folder, shard file or data set name")
    return [path.relative_to(data).as_posix() for path in find_images(Path(data))]


def _shard_images(data: str, shards: list[Path], size: int, workers: int,
                  in_memory: bool | None) -> InMemoryImages:
    """Shards decoded into memory; at most half the memory available now, since assembling holds them twice."""
    if in_memory is False:
        raise ValueError(f"--data {data}: shards are always decoded into memory (a compressed tar has no random "
                         "access); unpack them (tar -xf SHARD -C FOLDER) to decode a folder on demand")
    images = decode_shards(shards, size, workers, max_bytes=available_memory() // 2)
    if not len(images):
        raise ValueError(f"--data {data}: none of the image members of its {len(shards)} shard(s) could be decoded")
    log.info("%s: %d images from %d shard(s) decoded into memory (%.1f GB)", data, len(images), len(shards),
             images.nbytes / 1e9)
    return InMemoryImages(images, torch.full((len(images),), -1, dtype=torch.long))


def decode_images(paths: Sequence[Path], size: int, workers: int | None,
                  description: str = "decoding") -> tuple[torch.Tensor, list[int]]:
    """Decode files into one uint8 tensor [n_ok, 3, size, size] with a progress bar; also returns the indices of
    the paths decoded (unreadable files are left out with one warning each)."""
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    chunk = 256
    starts = range(0, len(paths), chunk)
    decoded_indices: list[int] = []
    with progress_bar(total=len(paths), unit="img", desc=description) as bar:
        for start, (arrays, errors) in zip(starts, decode_chunks([paths[i:i + chunk] for i in starts], size,
                                                                 workers), strict=True):
            row = len(decoded_indices)
            images[row:row + len(arrays)] = torch.from_numpy(arrays).permute(0, 3, 1, 2)
            for offset, error in enumerate(errors):
                if error is None:
                    decoded_indices.append(start + offset)
                else:
                    log.warning("skipping unreadable image %s: %s", paths[start + offset], error)
            bar.update(len(errors))
    return images[:len(decoded_indices)], decoded_indices


def available_memory() -> int:
    """Bytes of memory available to new allocations now (Linux MemAvailable; else free physical pages)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def labelled_splits(data: str, data_root: Path | None, size: int,
                    workers: int | None = None) -> tuple[InMemoryImages, InMemoryImages]:
    """Labelled (train, test) splits: a torchvision data set name, or a folder holding train/ and test/ trees."""
    if data in TORCHVISION_DATASETS:
        root = _require_root(data, data_root)
        return torchvision_split(data, root, train=True), torchvision_split(data, root, train=False)
    folder = Path(data)
    train = labelled_folder(folder / "train", size, workers=workers)
    return train, labelled_folder(folder / "test", size, classes=train.classes, workers=workers)


def labelled_folder(root: Path, size: int, classes: tuple[str, ...] | None = None,
                    workers: int | None = None) -> InMemoryImages:
    """An ImageFolder tree decoded into memory; the class is the first folder below `root`."""
    labelled = [(path, class_of(path, root)) for path in find_images(root)]
    names = classes or tuple(sorted({label for _, label in labelled if label is not None}))
    index = {name: i for i, name in enumerate(names)}
    members = [(path, label) for path, label in labelled if label in index]
    images, decoded = decode_images([path for path, _ in members], size, workers, f"decoding {root.name}")
    if not decoded:
        raise ValueError(f"{root}: no readable images in class folders")
    labels = torch.tensor([index[members[i][1]] for i in decoded])
    return InMemoryImages(images, labels, names)


def torchvision_split(name: str, root: Path, train: bool, unlabeled: bool = False) -> InMemoryImages:
    """CIFAR-10/100 (read by a restricted unpickler) or STL-10 (by torchvision) from `root`; STL-10's train+unlabeled
    when `unlabeled`."""
    if name == "stl10":
        from torchvision.datasets import STL10

        split = ("train+unlabeled" if unlabeled else "train") if train else "test"
        dataset = STL10(str(root), split=split, download=False)
        return InMemoryImages(torch.from_numpy(dataset.data), torch.from_numpy(dataset.labels).long(),
                              tuple(dataset.classes))
    from torchvision.datasets import CIFAR10, CIFAR100

    official = CIFAR10 if name == "cifar10" else CIFAR100
    md5 = {file: checksum for file, checksum in [*official.train_list, *official.test_list]}
    images, labels, classes = load_cifar(name, root, train, official_md5=md5)
    return InMemoryImages(torch.from_numpy(images), torch.from_numpy(labels), classes)


def _require_root(data: str, data_root: Path | None) -> Path:
    if data_root is None:
        raise ValueError(f"--data {data} needs --data-root DIR (the folder holding torchvision's {data} files)")
    return Path(data_root)
