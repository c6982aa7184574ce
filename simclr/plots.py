"""The figures the tool draws as PNG files: training curves and confusion matrices (matplotlib, no display)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported on first use: it costs half a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(metrics_path: Path, png_path: Path) -> Path:
    """Loss, contrastive accuracy and learning rate per step (and kNN top-1 per epoch when measured), from the
    records of a metrics.jsonl file."""
    plt = _pyplot()
    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    steps = [r for r in records if r.get("event") == "step"]
    knn = [r for r in records if r.get("event") == "epoch" and r.get("knn_top1") is not None]
    panels = [("loss", "NT-Xent loss"), ("contrastive_accuracy", "contrastive accuracy"), ("lr", "learning rate")]
    figure, axes = plt.subplots(1, len(panels) + bool(knn), figsize=(4.2 * (len(panels) + bool(knn)), 3.4))
    for axis, (key, title) in zip(axes, panels, strict=False):
        axis.plot([r["step"] for r in steps], [r[key] for r in steps], linewidth=1.2)
        axis.set_title(title)
        axis.set_xlabel("optimiser step")
        axis.grid(alpha=0.3)
    if knn:
        axes[-1].plot([r["epoch"] for r in knn], [100 * r["knn_top1"] for r in knn], marker="o")
        axes[-1].set_title("kNN top-1 (%)")
        axes[-1].set_xlabel("epoch")
        axes[-1].grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return Path(png_path)


def plot_confusion(matrix: np.ndarray, classes: tuple[str, ...], path: Path, title: str = "") -> None:
    """A confusion-matrix PNG (rows: true class, columns: predicted) with row-normalised colours and counts."""
    plt = _pyplot()
    size = max(4.0, 0.5 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(classes) <= 30:
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if rates[row, column] > 0.5 else "black")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
