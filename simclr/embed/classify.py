"""Classifying image files with an exported classifier (locally or on Triton): top-k class names and
probabilities per image."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr.embed.encoder import EncoderError, EncoderSpec
from simclr.embed.reader import embedded_batches, scan_inputs

PROBABILITIES = "probabilities"


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first; empty when `error`
    error: str | None = None

    def as_dict(self) -> dict:
        if self.error:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top": [{"class": name, "probability": p} for name, p in self.top]}


def open_classifier(spec: EncoderSpec):
    """The classifier of `spec` (its probabilities output); EncoderError when the model is not a classifier."""
    model = dataclasses.replace(spec, output=PROBABILITIES).open()
    if not getattr(model, "classes", ()):
        raise EncoderError(f"{model.source}: the model records no class names (export a fine-tuned run with "
                           "simclr export RUN_DIR --classifier)")
    return model


def classify(inputs: Sequence[Path], model, k: int = 5, batch_size: int = 256,
             workers: int | None = None) -> Iterator[Prediction]:
    """Top-`k` predictions of every image file under `inputs`, in order (unreadable files with their error)."""
    classes = model.classes
    k = min(k, len(classes))
    for batch in embedded_batches(scan_inputs(inputs), model, batch_size, workers):
        rows = iter(batch.embeddings)
        for entry, error in zip(batch.entries, batch.errors, strict=True):
            if error:
                yield Prediction(entry.path, [], error)
                continue
            probabilities = next(rows)
            best = np.argsort(-probabilities, kind="stable")[:k]
            yield Prediction(entry.path, [(classes[i], float(probabilities[i])) for i in best])
