"""Linear probe and weighted kNN on one pair of labelled feature sets, as one report."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from simclr.evaluate.knn import knn_top1
from simclr.evaluate.linear import linear_probe


@dataclass(frozen=True)
class ProbeReport:
    linear_top1: float
    linear_top5: float
    knn_top1: float
    l2: float
    validation_top1: dict[float, float]  # per L2 strength tried, ascending
    n_train: int
    n_test: int
    num_classes: int
    seconds: float
    predictions: np.ndarray  # linear classifier's test predictions
    l2_note: str = ""  # the default L2 grid was widened, or the best of a grid given is at its edge


def evaluate_features(train_features, train_labels, test_features, test_labels, num_classes: int,
                      l2_grid: tuple[float, ...] | None = None, k: int = 200, temperature: float = 0.1,
                      seed: int = 0, device: str = "cpu") -> ProbeReport:
    """The linear evaluation protocol (L2 chosen on held-out train; `l2_grid` None: the default grid, widened past
    an edge where the best strength is) and the weighted kNN classifier."""
    train_dim, test_dim = np.shape(train_features)[-1], np.shape(test_features)[-1]
    if train_dim != test_dim:
        raise ValueError(f"train features have {train_dim} dimensions, test features {test_dim}: embed both splits "
                         "with the same model")
    started = time.perf_counter()
    linear = linear_probe(train_features, train_labels, test_features, test_labels, num_classes, l2_grid,
                          seed=seed, device=device)
    knn = knn_top1(train_features, train_labels, test_features, test_labels, num_classes, k, temperature)
    return ProbeReport(linear_top1=linear.top1, linear_top5=linear.top5, knn_top1=knn, l2=linear.l2,
                       validation_top1=linear.validation_top1, n_train=len(train_labels), n_test=len(test_labels),
                       num_classes=num_classes, seconds=time.perf_counter() - started, predictions=linear.predictions,
                       l2_note=linear.l2_note)


def confusion_matrix(true_labels, predicted_labels, num_classes: int) -> np.ndarray:
    """Counts [C, C]: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true_labels), np.asarray(predicted_labels)), 1)
    return matrix
