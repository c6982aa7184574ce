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


def plot_training_curves(metrics_path: Path, png_path: Path, titles: dict[str, str] | None = None) -> Path:
    """One panel per number of a metrics.jsonl file's step records (the learning rate last), and one per number its
    epoch records add (kNN or test top-1, in %). `titles` names the panels by key."""
    plt = _pyplot()
    titles = {"lr": "learning rate", **(titles or {})}
    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    steps = [r for r in records if r.get("event") == "step"]
    epochs = [r for r in records if r.get("event") == "epoch"]
    skipped = {"event", "step", "epoch", "lr", "images_per_second"}
    step_keys = [key for key in (steps[0] if steps else {}) if key not in skipped] + ["lr"]
    epoch_keys = [key for key in titles if key not in step_keys and any(r.get(key) is not None for r in epochs)]
    count = len(step_keys) + len(epoch_keys)
    figure, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.4), squeeze=False)
    for axis, key in zip(axes[0], step_keys, strict=False):
        axis.plot([r["step"] for r in steps], [r[key] for r in steps], linewidth=1.2)
        axis.set_title(titles.get(key, key.replace("_", " ")))
        axis.set_xlabel("optimiser step")
        axis.grid(alpha=0.3)
    for axis, key in zip(axes[0][len(step_keys):], epoch_keys, strict=True):
        measured = [r for r in epochs if r.get(key) is not None]
        axis.plot([r["epoch"] for r in measured], [100 * r[key] for r in measured], marker="o")
        axis.set_title(f"{titles[key]} (%)")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
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
