"""Features of labelled image sets for evaluation: ImageFolder trees, torchvision data sets, or feats.npy files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from simclr.data.labels_file import read_labels_file
from simclr.embed.encoder import Encoder, EncoderSpec
from simclr.embed.features import load_features
from simclr.embed.reader import decoded_batches, scan_inputs
from simclr.progress import progress_bar

log = logging.getLogger("simclr")


@dataclass(frozen=True)
class LabelledFeatures:
    features: np.ndarray  # float32 [N, D]
    labels: np.ndarray  # int64 [N], indices into classes
    classes: tuple[str, ...]


def folder_classes(root: Path) -> tuple[str, ...]:
    """The class folders of an ImageFolder tree that hold images; empty ones are skipped with a warning."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected one folder per class)")
    names = sorted(child.name for child in root.iterdir() if child.is_dir())
    if not names:
        raise ValueError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    kept = []
    for name in names:
        try:
            scan_inputs([root / name])
            kept.append(name)
        except ValueError:
            log.warning("class %s in %s has no images; skipped", name, root)
    if len(kept) < 2:
        raise ValueError(f"{root}: needs at least 2 classes with images, found {len(kept)}")
    return tuple(kept)


def embed_folder(root: Path, classes: tuple[str, ...], encoder: Encoder, batch_size: int = 256,
                 workers: int | None = None, only: set[str] | None = None) -> LabelledFeatures:
    """Embed an ImageFolder tree; images of classes outside `classes` are left out with a warning. `only`: the
    paths (relative to `root`) to embed."""
    root = Path(root)
    present = set(folder_classes(root))
    unknown = sorted(present - set(classes))
    if unknown:
        log.warning("%s: classes %s are not in the training classes; their images are left out", root,
                    ", ".join(unknown))
    index = {name: i for i, name in enumerate(classes)}
    entries = [entry for entry in scan_inputs([root]) if entry.label in index]
    if only is not None:
        entries = [entry for entry in entries if Path(entry.path).relative_to(root).as_posix() in only]
    rows, labels = [], []
    with progress_bar(total=len(entries), unit="img", desc=f"embedding {root.name}") as bar:
        for batch in decoded_batches(entries, encoder.identity.image_size, batch_size, workers):
            if len(batch.images):
                rows.append(encoder.embed(batch.images))
            for entry, error in zip(batch.entries, batch.errors, strict=True):
                if error:
                    log.warning("skipping %s: %s", entry.path, error)
                else:
                    labels.append(index[entry.label])
            bar.update(len(batch.entries))
    return LabelledFeatures(np.concatenate(rows), np.asarray(labels, dtype=np.int64), classes)


def embed_arrays(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], encoder: Encoder,
                 batch_size: int = 256, description: str = "embedding") -> LabelledFeatures:
    """Embed uint8 images [N, H, W, 3] (resized to the encoder's size when they differ)."""
    size = encoder.identity.image_size
    rows = []
    with progress_bar(total=len(images), desc=description, unit="img") as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            if batch.shape[1:3] != (size, size):
                batch = np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
                                  for image in batch])
            rows.append(encoder.embed(np.ascontiguousarray(batch)))
            bar.update(len(batch))
    return LabelledFeatures(np.concatenate(rows), np.asarray(labels, dtype=np.int64), classes)


def features_file(path: Path, classes: tuple[str, ...] | None = None) -> LabelledFeatures:
    """Rows of a feats.npy whose sidecar records a class for them (ImageFolder embeddings)."""
    loaded = load_features(path)
    keep = [i for i, label in enumerate(loaded.labels) if label is not None]
    if not keep:
        raise ValueError(f"{path}: its rows have no classes (embed an ImageFolder tree: DIR/<class>/<images>)")
    names = classes or tuple(sorted({loaded.labels[i] for i in keep}))
    index = {name: i for i, name in enumerate(names)}
    outside = sorted({loaded.labels[i] for i in keep} - set(names))
    if outside:
        log.warning("%s: classes %s are not in the training classes; their rows are left out", path,
                    ", ".join(outside))
    keep = [i for i in keep if loaded.labels[i] in index]
    labels = np.asarray([index[loaded.labels[i]] for i in keep], dtype=np.int64)
    return LabelledFeatures(np.asarray(loaded.vectors[keep], dtype=np.float32), labels, names)


BASELINES = ("random", "pixels")


def evaluation_encoder(spec: EncoderSpec, checkpoint: Path | None = None, baseline: str | None = None,
                       image_size: int | None = None) -> Encoder:
    """The encoder to evaluate: a training checkpoint's f in PyTorch (at `image_size`, default its training size),
    else the exported or served model of `spec`; with `baseline`, the same architecture with random weights or raw
    pixels at that model's image size."""
    from simclr.embed.torch_encoder import PixelEncoder, TorchEncoder, model_config_from_metadata

    torch_device = "cuda" if spec.device == "cuda" else "cpu"
    if baseline not in (None, *BASELINES):
        raise ValueError(f"--baseline {baseline!r}: choose one of {', '.join(BASELINES)}")
    reference = TorchEncoder.from_checkpoint(checkpoint, torch_device, image_size) if checkpoint else spec.open()
    if baseline is None:
        return reference
    if baseline == "pixels":
        return PixelEncoder(reference.identity.image_size)
    if reference.metadata is None:
        raise ValueError("--baseline random needs the architecture, and this model does not record one")
    return TorchEncoder.random(model_config_from_metadata(reference.metadata), reference.identity.image_size,
                               device=torch_device)


def labelled_sets(encoder: Encoder | None, *, data: str | None = None, data_root: Path | None = None,
                  train: Path | None = None, test: Path | None = None, train_features: Path | None = None,
                  test_features: Path | None = None, limit_train: int | None = None, limit_test: int | None = None,
                  seed: int = 0, labels_file: Path | None = None) -> tuple[LabelledFeatures, LabelledFeatures]:
    """(train, test) features of one labelled source: a torchvision data set (`data`, `data_root`), ImageFolder
    trees (`train`, `test`) embedded with `encoder`, or feature files (`train_features`, `test_features`).
    `limit_*`: a seeded random subset of that many images (taken before embedding where possible). `labels_file`:
    only the train images a labelled_images.txt names (simclr finetune's), to compare on the same labels."""
    check_labelled_source(data=data, train=train, test=test, train_features=train_features,
                          test_features=test_features, limit_train=limit_train, limit_test=limit_test)
    labelled = {key: name for _, key, name in read_labels_file(labels_file)} if labels_file else None
    if labelled is not None and (train_features or test_features):
        raise ValueError("--labels-file names images: use it with --data or --train/--test, not feature files")
    if train_features or test_features:
        train_set = features_file(train_features)
        sets = train_set, features_file(test_features, train_set.classes)
    elif data:
        sets = _torchvision_sets(data, data_root, encoder, limit_train, limit_test, seed, labelled)
    else:
        classes = folder_classes(train)
        sets = embed_folder(train, classes, encoder, only=labelled), embed_folder(test, classes, encoder)
    return subset(sets[0], limit_train, seed), subset(sets[1], limit_test, seed)


def check_labelled_source(*, data: str | None = None, train: Path | None = None, test: Path | None = None,
                          train_features: Path | None = None, test_features: Path | None = None,
                          limit_train: int | None = None, limit_test: int | None = None) -> None:
    """ValueError naming the options when they do not describe exactly one complete labelled source (checked
    before any model is opened)."""
    sources = [data is not None, train is not None or test is not None,
               train_features is not None or test_features is not None]
    if sum(sources) != 1:
        raise ValueError("give one labelled source: --data NAME --data-root DIR, --train DIR --test DIR, or "
                         "--train-features F --test-features F")
    if (train is None) != (test is None):
        raise ValueError("--train and --test go together")
    if (train_features is None) != (test_features is None):
        raise ValueError("--train-features and --test-features go together")
    for name, limit in (("--limit-train", limit_train), ("--limit-test", limit_test)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} {limit}: must be at least 1 (leave it out to use every image)")


def subset(features: LabelledFeatures, limit: int | None, seed: int) -> LabelledFeatures:
    """A seeded subset of at most `limit` rows, in their original order."""
    if not limit or len(features.labels) <= limit:
        return features
    keep = np.sort(np.random.default_rng(seed).permutation(len(features.labels))[:limit])
    return LabelledFeatures(features.features[keep], features.labels[keep], features.classes)


def _torchvision_sets(data: str, data_root: Path | None, encoder: Encoder, limit_train: int | None,
                      limit_test: int | None, seed: int, labelled: dict[str, str] | None = None
                      ) -> tuple[LabelledFeatures, LabelledFeatures]:
    from simclr.data.datasets import TORCHVISION_DATASETS, torchvision_split

    if data not in TORCHVISION_DATASETS:
        raise ValueError(f"--data {data!r}: cifar10, cifar100 or stl10 (or use --train/--test folders)")
    if data_root is None:
        raise ValueError(f"--data {data} needs --data-root DIR")
    sets = []
    for split_name, limit in (("train", limit_train), ("test", limit_test)):
        split = torchvision_split(data, data_root, train=split_name == "train")
        if labelled is not None and split_name == "train":
            split = _named_rows(split, labelled)
        split = split.subset(limit, seed) if limit else split
        sets.append(embed_arrays(split.images.permute(0, 2, 3, 1).numpy(), split.labels.numpy(), split.classes,
                                 encoder, description=f"embedding {data} {split_name}"))
    return sets[0], sets[1]


def _named_rows(split, labelled: dict[str, str]):
    """The rows of a torchvision split that a labels file names by index, checked against their classes."""
    from simclr.data.datasets import InMemoryImages

    rows = []
    for key, name in labelled.items():
        if not key.isdigit() or int(key) >= len(split):
            raise ValueError(f"--labels-file: image {key!r} is not an index of this data set's train split")
        if split.classes[int(split.labels[int(key)])] != name:
            raise ValueError(f"--labels-file: image {key} has class {split.classes[int(split.labels[int(key)])]!r} "
                             f"here, not {name!r}: the file was written for other data")
        rows.append(int(key))
    return InMemoryImages(split.images[rows], split.labels[rows], split.classes)
