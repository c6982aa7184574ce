"""Features of labelled image sets for evaluation: ImageFolder trees, torchvision data sets, or feats.npy files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from simclr.embed.encoder import Encoder
from simclr.embed.features import load_features
from simclr.embed.reader import decoded_batches, scan_inputs

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
                 workers: int | None = None) -> LabelledFeatures:
    """Embed an ImageFolder tree; images of classes outside `classes` are left out with a warning."""
    root = Path(root)
    present = set(folder_classes(root))
    unknown = sorted(present - set(classes))
    if unknown:
        log.warning("%s: classes %s are not in the training classes; their images are left out", root,
                    ", ".join(unknown))
    entries = [entry for name in classes if name in present for entry in scan_inputs([root / name])]
    index = {name: i for i, name in enumerate(classes)}
    rows, labels = [], []
    with tqdm(total=len(entries), unit="img", desc=f"embedding {root.name}", dynamic_ncols=True) as bar:
        for batch in decoded_batches(entries, encoder.identity.image_size, batch_size, workers):
            if len(batch.images):
                rows.append(encoder.embed(batch.images))
            for entry, error in zip(batch.entries, batch.errors, strict=True):
                if error:
                    log.warning("skipping %s: %s", entry.path, error)
                else:
                    labels.append(index[Path(entry.path).relative_to(root).parts[0]])
            bar.update(len(batch.entries))
    return LabelledFeatures(np.concatenate(rows), np.asarray(labels, dtype=np.int64), classes)


def embed_arrays(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], encoder: Encoder,
                 batch_size: int = 256, description: str = "embedding") -> LabelledFeatures:
    """Embed uint8 images [N, H, W, 3] (resized to the encoder's size when they differ)."""
    size = encoder.identity.image_size
    rows = []
    for start in tqdm(range(0, len(images), batch_size), desc=description, unit="batch", dynamic_ncols=True):
        batch = images[start:start + batch_size]
        if batch.shape[1:3] != (size, size):
            batch = np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
                              for image in batch])
        rows.append(encoder.embed(np.ascontiguousarray(batch)))
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
