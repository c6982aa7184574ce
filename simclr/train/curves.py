"""The training-curve PNG drawn from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_training_curves(metrics_path: Path, png_path: Path) -> Path:
    """Loss, contrastive accuracy and learning rate per step (and kNN top-1 per epoch when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
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
