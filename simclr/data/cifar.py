"""CIFAR-10/100 in torchvision's python layout, read without trusting the files: each batch is a pickle, so it is
read by an unpickler that admits only what the format holds (dicts, lists, strings, bytes, numbers and numpy
arrays). A crafted batch cannot run code; it fails with a line that names the file."""

from __future__ import annotations

import hashlib
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("simclr")


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str


LAYOUTS = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "batches.meta", "labels", "label_names"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names"),
}

# What numpy arrays and protocol-2 bytes need to be rebuilt; nothing else is looked up.
_ALLOWED_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                    ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """One batch or meta file as a dict; ValueError names the file when it is not one (hostile ones included)."""
    try:
        with open(path, "rb") as file:
            batch = _BatchUnpickler(file, encoding="latin1").load()
    except OSError:
        raise
    except Exception as error:  # a damaged or hostile pickle can raise almost anything
        raise ValueError(f"{path}: not a CIFAR batch ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR batch (a {type(batch).__name__}, not a dict)")
    return batch


def load_cifar(name: str, root: Path, train: bool,
               official_md5: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N], class names) of one split. With `official_md5` (file name ->
    md5), files that differ from the official release are read too, with one warning (re-encoded copies)."""
    layout = LAYOUTS[name]
    folder = Path(root) / layout.folder
    files = [folder / file for file in (layout.train if train else layout.test)]
    missing = [str(path) for path in [*files, folder / layout.meta] if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"--data-root {root}: no {name} found (missing {missing[0]}; expected "
                                f"{folder}/ in torchvision's layout)")
    images, labels = [], []
    for path in files:
        batch = read_batch(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = np.asarray(batch[layout.label_key], dtype=np.int64)
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{path}: not a CIFAR batch ({type(error).__name__}: {error})") from None
        if len(batch_labels) != len(data):
            raise ValueError(f"{path}: {len(data)} images but {len(batch_labels)} labels")
        images.append(data)
        labels.append(batch_labels)
    names = read_batch(folder / layout.meta).get(layout.names_key, ())
    if not isinstance(names, list | tuple):
        raise ValueError(f"{folder / layout.meta}: not CIFAR metadata (its {layout.names_key} is no list)")
    classes = tuple(str(label) for label in names)
    if official_md5 is not None:
        changed = [path.name for path in files if official_md5.get(path.name) not in (None, _md5(path))]
        if changed:
            log.warning("%s in %s differs from the official files (md5 of %s); read anyway", name, root,
                        ", ".join(changed))
    return np.concatenate(images), np.concatenate(labels), classes


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()
