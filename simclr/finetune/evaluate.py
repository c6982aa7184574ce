"""A classifier on a labelled test set: top-1, top-5, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from simclr.evaluate.linear import topk_accuracy
from simclr.evaluate.probe import confusion_matrix
from simclr.finetune.labels import LabelledImages
from simclr.train.monitor import encode_images


@dataclass(frozen=True)
class ClassifierReport:
    top1: float
    top5: float
    per_class: dict[str, float]
    confusion: np.ndarray  # counts [C, C]: row = true class, column = predicted
    n_test: int

    def as_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "per_class": self.per_class, "n_test": self.n_test}


def report_from_scores(scores: torch.Tensor, test: LabelledImages) -> ClassifierReport:
    """The report of class scores [N, C] (logits or probabilities) against `test`'s labels."""
    labels = test.labels
    predicted = scores.argmax(dim=1).numpy()
    matrix = confusion_matrix(labels.numpy(), predicted, len(test.classes))
    per_class = {name: float(matrix[i, i] / max(matrix[i].sum(), 1)) for i, name in enumerate(test.classes)}
    return ClassifierReport(topk_accuracy(scores, labels, 1), topk_accuracy(scores, labels, min(5, scores.shape[1])),
                            per_class, matrix, len(labels))


def evaluate_classifier(model: nn.Module, test: LabelledImages, image_size: int,
                        device: torch.device) -> ClassifierReport:
    """`model` (float images -> logits) in eval mode on every test image."""
    was_training = model.training
    model.eval()
    try:
        return report_from_scores(encode_images(model, test.images, image_size, device), test)
    finally:
        model.train(was_training)
