"""`simclr finetune` as a library call: choose the labelled images, build the classifier from the pre-trained
model, fine-tune, evaluate; with `compare`, the same network from random weights and the linear probe on the same
labels. Everything lands in the run directory: labelled_images.txt, config.json, last.pt, metrics.jsonl, the curves,
confusion.png, results.json and README.md (the run's card)."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from simclr.atomic import atomic_write_text
from simclr.data.labels_file import LABELS_NAME
from simclr.finetune.config import FinetuneConfig, default_epochs, validate
from simclr.finetune.evaluate import ClassifierReport, evaluate_classifier
from simclr.finetune.labels import (
    LabelledImages,
    Split,
    balanced_rows,
    data_split,
    per_class_for_fraction,
    rows_from_labels_file,
    write_labels_file,
)
from simclr.finetune.loop import FineTuner
from simclr.finetune.model import Classifier, kept_head
from simclr.finetune.start import PretrainedModel, open_pretrained, prepare_onnx_start
from simclr.plots import plot_confusion
from simclr.train import distributed
from simclr.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from simclr.train.config import resumed
from simclr.train.model import ResNetEncoder
from simclr.train.monitor import encode_images
from simclr.train.runtime import resolve_device

log = logging.getLogger("simclr")

RESULTS_NAME = "results.json"
CONFUSION_NAME = "confusion.png"
CARD_NAME = "README.md"
SCRATCH_DIR = "scratch"


@dataclass(frozen=True)
class LabelledSets:
    """A run's images, decoded into memory once: the labelled train images, the whole test split, and the size of
    the train split they were chosen from."""

    train: LabelledImages
    test: LabelledImages
    train_split_size: int


@dataclass(frozen=True)
class FinetuneOutcome:
    config: FinetuneConfig  # as run: epochs and batch resolved
    report: ClassifierReport
    labelled: LabelledSets
    steps: int
    images_per_second: float


def new_config(source: Path, options: dict) -> FinetuneConfig:
    """The config of a new run from `source` (a checkpoint, run directory or exported model) and the command's
    options (None: not given)."""
    pretrained = open_pretrained(source)
    config = FinetuneConfig(source=str(Path(source).resolve()), image_size=pretrained.image_size,
                            model=pretrained.model_config)
    config = dataclasses.replace(config, **{key: value for key, value in options.items() if value is not None})
    if config.head_layers_kept is None:
        config = dataclasses.replace(config, head_layers_kept=pretrained.default_head_layers)
    elif config.head_layers_kept and pretrained.head_state is None:
        raise ValueError(f"--head-layers-kept {config.head_layers_kept}: {source} is an exported model, which has "
                         "no projection head g (fine-tune from a training checkpoint to keep g's layers)")
    validate(config)
    return config


def resumed_config(out: Path, options: dict) -> FinetuneConfig:
    """The saved config of the run in `out`, with the options --resume may change."""
    checkpoint = Path(out) / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--resume: {checkpoint} does not exist (nothing to resume in --out {out})")
    saved = FinetuneConfig.from_dict(load_checkpoint(checkpoint)["config"])
    return resumed(saved, options)


def finetune_and_compare(config: FinetuneConfig, out: Path, resume: bool = False, compare: bool = False) -> dict:
    """Fine-tune in `out` (and, with `compare`, train the same network from random weights in out/scratch/ and fit
    the linear probe on the same labels); writes results.json and the card; returns the results (on rank 0; other
    ranks of a torchrun job return {})."""
    out = Path(out)
    if not resume and (out / CHECKPOINT_NAME).exists():
        raise FileExistsError(f"--out {out} already holds a run ({out / CHECKPOINT_NAME}); pass --resume to "
                              "continue it or choose another --out")
    device = resolve_device(config.device)
    distributed.setup(device)
    try:
        if compare:
            _heading(f"1/3 fine-tuning the pre-trained encoder ({Path(config.source).name})")
        tuned = finetune(config, out, device, resume, baseline_follows=compare)
        labelled = tuned.labelled
        results = {"finetune": _summary(tuned), "source": config.source, "data": config.data,
                   "labelled_images": len(labelled.train), "classes": list(labelled.train.classes)}
        if compare:
            _heading("2/3 the same network from random weights (the baseline), on the same labels and schedule")
            scratch_out = out / SCRATCH_DIR
            scratch_config = dataclasses.replace(tuned.config, start="random", labels_file=str(out / LABELS_NAME),
                                                 label_fraction=None, labels_per_class=None)
            scratch = finetune(scratch_config, scratch_out, device, (scratch_out / CHECKPOINT_NAME).is_file(),
                               decoded=labelled)
            results["scratch"] = _summary(scratch)
            _heading("3/3 linear probe (and kNN) of the pre-trained encoder on the same labels")
            if distributed.rank() == 0:
                results["linear"] = linear_probe_on_labels(tuned.config, labelled.train, labelled.test)
        if distributed.rank() != 0:
            return {}
        write_results(out, tuned.config, results)
        return results
    finally:
        distributed.teardown()


def _summary(outcome: FinetuneOutcome) -> dict:
    return {**outcome.report.as_dict(), "epochs": outcome.config.epochs, "steps": outcome.steps,
            "batch_size": outcome.config.batch_size, "images_per_second": outcome.images_per_second}


def _heading(line: str) -> None:
    """The heading line of one of --compare's three phases."""
    if distributed.rank() == 0:
        log.info("%s", line)


def finetune(config: FinetuneConfig, out: Path, device: torch.device, resume: bool,
             decoded: LabelledSets | None = None, baseline_follows: bool = False) -> FinetuneOutcome:
    """One fine-tuning run (or its resume) in `out`, evaluated on the test split at the end. `decoded`: the
    images of an earlier run on the same labelled images (--compare's baseline), used instead of decoding them
    again; `baseline_follows`: the estimate of the time counts that baseline too."""
    labelled = labelled_sets(config, out, resume, decoded)
    train, test, total = labelled.train, labelled.test, labelled.train_split_size
    if config.epochs is None:
        fraction = config.label_fraction if config.label_fraction is not None else len(train) / total
        config = dataclasses.replace(config, epochs=default_epochs(fraction))
    batch = min(config.batch_size, len(train) - len(train) % distributed.world_size())
    if batch != config.batch_size:
        log.info("--batch-size %d is more than the %d labelled images: using %d", config.batch_size, len(train),
                 batch)
        config = dataclasses.replace(config, batch_size=batch)
    torch.manual_seed(config.seed)  # the same classifier on every rank
    tuner = FineTuner(config, out, device, build_classifier(config, train, resume), train, test, resume,
                      baseline_follows)
    _, images_per_second = tuner.run_epochs()
    report = evaluate_classifier(tuner.model, test, config.image_size, device)
    if tuner.is_main:
        title = "from random weights" if config.start == "random" else "fine-tuned"
        plot_confusion(report.confusion, test.classes, out / CONFUSION_NAME,
                       f"{title}, {len(train)} labels: top-1 {100 * report.top1:.1f}%")
    return FinetuneOutcome(config, report, labelled, tuner.step, images_per_second)


def labelled_sets(config: FinetuneConfig, out: Path, resume: bool, decoded: LabelledSets | None = None
                  ) -> LabelledSets:
    """The run's images, decoded into memory once (or `decoded`, an earlier run's on the same labelled images). A
    resumed run reads its labelled_images.txt; a new one writes it."""
    if decoded is None:
        root = Path(config.data_root) if config.data_root else None
        split = data_split(config.data, root, True, config.image_size, config.workers)
        labels_file = out / LABELS_NAME if resume else config.labels_file
        rows = rows_from_labels_file(Path(labels_file), split) if labels_file else choose_rows(config, split)
        train = split.load(rows)
        test_split = data_split(config.data, root, False, config.image_size, config.workers, classes=split.classes)
        decoded = LabelledSets(train, test_split.load(np.arange(len(test_split.keys))), len(split.keys))
    if not resume and distributed.rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_labels_file(out / LABELS_NAME, decoded.train,
                          describe_choice(config, decoded.train, decoded.train_split_size))
    return decoded


def choose_rows(config: FinetuneConfig, split: Split) -> np.ndarray:
    """The class-balanced, seeded choice of labelled rows (every row when no fraction or count is given)."""
    classes = len(split.classes)
    if config.labels_per_class is not None:
        return balanced_rows(split.labels, classes, config.labels_per_class, config.seed)
    if config.label_fraction is not None and config.label_fraction < 1:
        per_class = per_class_for_fraction(config.label_fraction, len(split.keys), classes)
        return balanced_rows(split.labels, classes, per_class, config.seed)
    return np.arange(len(split.keys))


def describe_choice(config: FinetuneConfig, train: LabelledImages, total: int) -> str:
    how = (f"--labels-file {config.labels_file}" if config.labels_file else
           f"{config.labels_per_class} per class" if config.labels_per_class else
           f"--label-fraction {config.label_fraction}" if config.label_fraction else "every label")
    return (f"simclr finetune: {len(train)} labelled images of {total} in {config.data}'s train split, "
            f"{len(train.classes)} classes ({how}, seed {config.seed})")


def build_classifier(config: FinetuneConfig, train: LabelledImages, resume: bool) -> Classifier:
    """The classifier at its starting point: the pre-trained f and kept layers of g (an ONNX start checked against
    ONNX Runtime, a folded one calibrated on the labelled images), or random weights for `start="random"`.
    On resume the weights come from the checkpoint instead."""
    classes = len(train.classes)
    if config.start == "random" or resume:
        return Classifier(ResNetEncoder(config.model), kept_head(config.model, config.head_layers_kept),
                          classes)
    pretrained = open_pretrained(Path(config.source))
    if pretrained.kind == "onnx":
        difference = prepare_onnx_start(pretrained, at_size(train.images[:256], config.image_size))
        log.info("%s read back from ONNX (%s batch norm): max abs difference to ONNX Runtime %.2g", pretrained.path,
                 "folded, calibrated" if pretrained.folded else "unfolded", difference)
    return Classifier(pretrained.encoder, kept_head(config.model, config.head_layers_kept, pretrained.head_state),
                      classes)


def at_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] resized (bilinear, antialiased) to `size` where it differs."""
    if images.shape[-1] == size:
        return images
    resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def linear_probe_on_labels(config: FinetuneConfig, train: LabelledImages, test: LabelledImages) -> dict:
    """The linear evaluation protocol (and kNN) of the pre-trained encoder, trained on the same labelled images."""
    from simclr.evaluate.probe import evaluate_features

    pretrained: PretrainedModel = open_pretrained(Path(config.source))
    encoder = pretrained.encoder.eval()
    device = torch.device("cpu")
    features = [encode_images(encoder.features, split.images, config.image_size, device).numpy()
                for split in (train, test)]
    report = evaluate_features(features[0], train.labels.numpy(), features[1], test.labels.numpy(),
                               len(train.classes), seed=config.seed, k=min(200, len(train)))
    return {"top1": report.linear_top1, "top5": report.linear_top5, "knn_top1": report.knn_top1, "l2": report.l2,
            "n_train": report.n_train, "n_test": report.n_test}


def write_results(out: Path, config: FinetuneConfig, results: dict) -> None:
    """results.json and the run's card (README.md) with the table."""
    atomic_write_text(out / RESULTS_NAME, json.dumps(results, indent=2) + "\n")
    rows = [("fine-tuned", results["finetune"])]
    rows += [(name, results[key]) for key, name in (("scratch", "from random weights, same schedule"),
                                                    ("linear", "linear probe of the pre-trained encoder"))
             if key in results]
    table = "\n".join(f"| {name} | {100 * row['top1']:.2f}% | {100 * row['top5']:.2f}% |" for name, row in rows)
    card = f"""# Fine-tuned classifier

From `{config.source}` on {results['labelled_images']} labelled images of `{config.data}`
({len(results['classes'])} classes; the images are listed in `{LABELS_NAME}`), {config.epochs} epochs, batch
{config.batch_size}, {config.optimizer} at base lr {config.base_lr:g} ({config.lr_scaling} scaling), weight decay
{config.weight_decay:g}, {config.head_layers_kept} layer(s) of g kept, seed {config.seed}. Test split:
{results['finetune']['n_test']} images.

| model | top-1 | top-5 |
|---|---|---|
{table}

Curves: `training_curves.png`; confusion matrix: `{CONFUSION_NAME}`; every figure: `{RESULTS_NAME}`.
"""
    atomic_write_text(out / CARD_NAME, card)
