"""The labelled images of a fine-tuning run: a class-balanced, seeded choice from the train split, written to the
run directory as labelled_images.txt (one image a line: its index in the data set or its path, then its class) so
that a run is reproducible and two methods can be compared on the same labels."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simclr.atomic import atomic_write_text
from simclr.data.datasets import TORCHVISION_DATASETS, decode_images, torchvision_split
from simclr.data.images import class_of, find_images
from simclr.data.labels_file import format_labels_file, read_labels_file

log = logging.getLogger("simclr")

@dataclass(frozen=True)
class LabelledImages:
    """Images in memory: uint8 [N, 3, H, W], int64 labels [N], class names, and each image's key (its index in
    the data set, or its path relative to the split's folder)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    keys: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Split:
    """One split, listed before anything is decoded: keys, labels and a loader for chosen rows."""

    keys: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    load: Callable[[np.ndarray], LabelledImages]


def data_split(data: str, data_root: Path | None, train: bool, size: int, workers: int | None = None,
               classes: tuple[str, ...] | None = None) -> Split:
    """The train or test split of a torchvision data set (`data_root`) or of a folder with train/ and test/ class
    folders (decoded to `size` pixels; `classes` fixes the test split's class order to the train split's)."""
    if data in TORCHVISION_DATASETS:
        if data_root is None:
            raise ValueError(f"--data {data} needs --data-root DIR (the folder holding torchvision's {data} files)")
        whole = torchvision_split(data, Path(data_root), train=train)
        keys = tuple(str(index) for index in range(len(whole)))

        def take(rows: np.ndarray) -> LabelledImages:
            chosen = torch.from_numpy(np.asarray(rows, dtype=np.int64))
            return LabelledImages(whole.images[chosen], whole.labels[chosen], whole.classes,
                                  tuple(keys[row] for row in rows))

        return Split(keys, whole.labels.numpy(), whole.classes, take)
    root = Path(data) / ("train" if train else "test")
    if not root.is_dir():
        raise FileNotFoundError(f"--data {data}: no {root} (a labelled folder holds train/<class>/ and test/<class>/ "
                                "images; or name a data set: cifar10, cifar100, stl10)")
    listed = [(path, class_of(path, root)) for path in find_images(root)]
    listed = [(path, name) for path, name in listed if name is not None]
    names = classes or tuple(sorted({name for _, name in listed}))
    for name in names:
        _check_class_name(name, root)
    index = {name: i for i, name in enumerate(names)}
    listed = [(path, name) for path, name in listed if name in index]
    if len(names) < 2 or not listed:
        raise ValueError(f"{root}: needs images in at least 2 class folders ({root}/<class>/<image files>)")
    keys = tuple(path.relative_to(root).as_posix() for path, _ in listed)

    def decode(rows: np.ndarray) -> LabelledImages:
        images, decoded = decode_images([listed[row][0] for row in rows], size, workers, f"decoding {root.name}")
        log.info("%s: %d images decoded once into memory (%d px, %.1f MB)", root, len(decoded), size,
                 images.nbytes / 1e6)
        kept = [rows[i] for i in decoded]
        labels = torch.tensor([index[listed[row][1]] for row in kept], dtype=torch.long)
        return LabelledImages(images, labels, names, tuple(keys[row] for row in kept))

    return Split(keys, np.asarray([index[name] for _, name in listed], dtype=np.int64), names, decode)


def balanced_rows(labels: np.ndarray, num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """`per_class` seeded random rows of each class (all of a class that has fewer, with a warning), sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            log.warning("class %d has %d images, fewer than the %d asked for: all of them are labelled", label,
                        len(members), per_class)
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen))


def per_class_for_fraction(fraction: float, total: int, num_classes: int) -> int:
    """Images per class that make `fraction` of `total` (at least one)."""
    return max(1, round(fraction * total / num_classes))


def _check_class_name(name: str, root: Path) -> None:
    """ValueError naming the folder when a class name cannot be one line of labels.txt and labelled_images.txt: a
    tab, a line break or another control character, or a byte that is not UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        readable = False
    else:
        readable = not any(ord(character) < 32 or ord(character) == 127 for character in name)
    if not readable:
        raise ValueError(f"{root}: the class folder {name!r} has a tab, a line break, a control character or a byte "
                         "that is not UTF-8 in its name; rename it (a class is one line of labels.txt)")


def write_labels_file(path: Path, labelled: LabelledImages, description: str) -> None:
    """The run's labelled_images.txt."""
    entries = [(key, labelled.classes[label]) for key, label in zip(labelled.keys, labelled.labels.tolist(),
                                                                     strict=True)]
    atomic_write_text(path, format_labels_file(entries, description))


def rows_from_labels_file(path: Path, split: Split) -> np.ndarray:
    """The rows of `split` a labelled_images.txt names; ValueError names the file and line of a key that is not in
    the split or whose class differs from the split's."""
    row_of = {key: row for row, key in enumerate(split.keys)}
    rows = []
    for number, key, name in read_labels_file(path):
        if key not in row_of:
            raise ValueError(f"{path}:{number}: image {key!r} is not in this data's train split")
        row = row_of[key]
        if name != split.classes[split.labels[row]]:
            raise ValueError(f"{path}:{number}: image {key!r} has class {split.classes[split.labels[row]]!r} here, "
                             f"not {name!r}: the file was written for other data")
        rows.append(row)
    return np.asarray(rows, dtype=np.int64)
