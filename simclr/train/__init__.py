"""Training: augmentation, encoder and head, NT-Xent, LARS, and the (distributed) training loop.

The names below are loaded on first use, so that importing `simclr.train.config` (the recipe, which the CLI reads
to build its options) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "TrainConfig": "config", "build_config": "config",
    "TrainingError": "epochs", "TrainingInterrupted": "epochs", "TrainResult": "loop", "train": "loop",
    "contrastive_accuracy": "loss", "nt_xent": "loss",
    "ProjectionHead": "model", "ResNetEncoder": "model", "SimCLRModel": "model",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'simclr.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"simclr.train.{_HOMES[name]}"), name)
