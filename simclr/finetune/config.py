"""The fine-tuning recipe (SimCLRv2 section 4; SimCLR v1 appendix B.5) as a frozen dataclass, saved with each run.

The papers' recipe, each part an option: LARS at 0.005 x sqrt(batch) (SimCLRv2; `--base-lr 0.08 --lr-scaling sqrt`
is that rule in this tool's per-256 form), or Nesterov-momentum SGD at 0.05 x batch/256 (SimCLR v1: `--optimizer sgd
--lr-scaling linear --base-lr 0.05`); no weight decay and no warm-up; only random crops and horizontal flips; batch
norm in train mode; a zero-initialised linear classifier trained with cross-entropy (left out of LARS's adaptation,
as SimCLR's code does); fine-tuned from the first layer of the projection head g where g is there (SimCLRv2); 60
epochs with 1% of the labels and 30 with 10%. The papers' batches (1,024-4,096) are larger than a small labelled
set; 64 gives 500 labelled images 7 steps an epoch. On CIFAR-10 at 1% (500 labels) the SimCLRv2 recipe read 68.98%
top-1 and the v1 recipe 67.92%, on the same labels (README).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from simclr.train.config import (
    LR_SCALINGS,
    PRECISION_HELP,
    PRECISIONS,
    SAVE_EVERY_HELP,
    ModelConfig,
    OptimConfig,
    dataclass_from_dict,
    setting,
)

FINETUNE_OPTIMIZERS = ("lars", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a fine-tuning run needs; saved as config.json beside every checkpoint."""

    data: str = setting("cifar10", "Labelled data: cifar10, cifar100, stl10 (from --data-root) or a folder DIR "
                                        "holding DIR/train/<class>/ and DIR/test/<class>/ images. [default: cifar10]")
    data_root: str | None = setting(None, "Folder holding torchvision's files for --data cifar10/cifar100/"
                                               "stl10.")
    label_fraction: float | None = setting(None, "Label this fraction of the train split, class-balanced and "
                                                      "seeded (0.01 = the papers' 1%). [default: every label, unless "
                                                      "--labels-per-class or --labels-file]")
    labels_per_class: int | None = setting(None, "Label this many train images of each class instead.")
    labels_file: str | None = setting(None, "Reuse the labelled images of another run: its "
                                                 "labelled_images.txt.")
    head_layers_kept: int | None = setting(None, "Layers of the projection head g kept under the classifier "
                                                      "(SimCLRv2 fine-tunes from g's first layer). [default: 1 from "
                                                      "a training checkpoint; 0 from an exported model, which has no "
                                                      "g]")
    epochs: int | None = setting(None, "Epochs over the labelled images. [default: 60 with at most 1% of the "
                                            "labels, else 30 (SimCLR v1 B.5, SimCLRv2 4)]")
    batch_size: int = setting(64, "Global batch (all processes together), capped at the labelled image count.")
    optimizer: str = setting("lars", "lars: LARS (SimCLRv2); sgd: Nesterov momentum (SimCLR v1, with --lr-scaling "
                                     "linear --base-lr 0.05).", FINETUNE_OPTIMIZERS)
    base_lr: float = setting(0.08, "Learning rate per 256 images: lr = base x sqrt(batch/256) (0.08: SimCLRv2's "
                                   "0.005 x sqrt(batch)), or x batch/256 with --lr-scaling linear.")
    lr_scaling: str = setting("sqrt", "How the learning rate grows with the batch.", LR_SCALINGS)
    momentum: float = setting(0.9, "Momentum.")
    weight_decay: float = setting(0.0, "Weight decay (the papers use none when fine-tuning).")
    warmup_epochs: float = setting(0.0, "Linear warm-up epochs before the cosine decay (the papers: none).")
    crop_scale_min: float = setting(0.08, "Smallest area fraction of the random resized crop (crops and "
                                               "horizontal flips are the only augmentation, as the papers).")
    eval_every: int = setting(0, "Also evaluate on the test split every N epochs (0: at the end only).",
                                   resumable=True)
    seed: int = setting(0, "Seed for the labelled subset, the classifier, shuffling and augmentation.")
    workers: int = setting(2, "Decoding processes for folder data.", resumable=True)
    precision: str = setting("auto", PRECISION_HELP, PRECISIONS)
    sync_batch_norm: bool = setting(True, "Global batch norm across processes under torchrun.")
    save_every_minutes: float = setting(0.0, SAVE_EVERY_HELP, resumable=True)
    log_every: int = setting(5, "Steps between metrics.jsonl lines.", resumable=True)
    max_steps: int | None = setting(None, "Stop after this many optimiser steps, saving a resumable checkpoint. "
                                               "[default: no limit]", resumable=True)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.", resumable=True)
    # Set by the command from the pre-trained model, not options:
    source: str = ""
    start: str = "pretrained"  # or "random": the from-scratch baseline of --compare
    image_size: int = 32
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        return dataclass_from_dict(cls, values)

    @property
    def optim(self) -> OptimConfig:
        """The optimiser settings in the form simclr.train.optim builds from."""
        return OptimConfig(optimizer=self.optimizer, base_lr=self.base_lr, lr_scaling=self.lr_scaling,
                           weight_decay=self.weight_decay, momentum=self.momentum, warmup_epochs=self.warmup_epochs,
                           nesterov=self.optimizer == "sgd")


def default_epochs(label_fraction: float) -> int:
    """The papers' schedule: 60 epochs with at most 1% of the labels, 30 with more."""
    return 60 if label_fraction <= 0.01 + 1e-9 else 30


def validate(config: FinetuneConfig) -> None:
    """Raise ValueError naming the option for values no run can use."""
    chosen = [name for name, value in (("--label-fraction", config.label_fraction),
                                       ("--labels-per-class", config.labels_per_class),
                                       ("--labels-file", config.labels_file)) if value is not None]
    checks = [
        (len(chosen) <= 1, f"{' and '.join(chosen)}: give at most one way of choosing the labelled images"),
        (config.label_fraction is None or 0 < config.label_fraction <= 1,
         f"--label-fraction {config.label_fraction}: must be in (0, 1]"),
        (config.labels_per_class is None or config.labels_per_class >= 1,
         f"--labels-per-class {config.labels_per_class}: must be at least 1"),
        (config.head_layers_kept is None or config.head_layers_kept >= 0,
         f"--head-layers-kept {config.head_layers_kept}: must be 0 or more"),
        (config.epochs is None or config.epochs >= 1, f"--epochs {config.epochs}: must be at least 1"),
        (config.batch_size >= 2, f"--batch-size {config.batch_size}: must be at least 2 (batch norm in train mode)"),
        (config.optimizer in FINETUNE_OPTIMIZERS,
         f"--optimizer {config.optimizer!r}: choose one of {', '.join(FINETUNE_OPTIMIZERS)}"),
        (config.lr_scaling in LR_SCALINGS,
         f"--lr-scaling {config.lr_scaling!r}: choose one of {', '.join(LR_SCALINGS)}"),
        (config.base_lr > 0, f"--base-lr {config.base_lr}: must be positive"),
        (config.weight_decay >= 0, f"--weight-decay {config.weight_decay}: must be 0 or more"),
        (0 < config.crop_scale_min <= 1, f"--crop-scale-min {config.crop_scale_min}: must be in (0, 1]"),
        (config.precision in PRECISIONS, f"--precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}"),
        (config.max_steps is None or config.max_steps >= 1, f"--max-steps {config.max_steps}: must be at least 1"),
        (config.eval_every >= 0, f"--eval-every {config.eval_every}: must be 0 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
