"""Evaluation: pure functions on feature arrays (any stage may use them)."""

from simclr.evaluate.knn import knn_class_scores, knn_top1

__all__ = ["knn_class_scores", "knn_top1"]
