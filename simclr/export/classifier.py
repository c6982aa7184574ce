"""A fine-tuned classifier as a Triton model: one ONNX with the outputs `embedding`, `logits` and `probabilities`,
and the class names in labels.txt, which config.pbtxt names as the `label_filename` of the last two, so that
Triton's classification extension (`class_count=k`) answers with names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from simclr.export.bytes_model import BYTES_MODEL_DEFAULTS, BytesModelOptions, write_bytes_models
from simclr.export.layout import OUTPUT_NAME, ModelMetadata
from simclr.export.onnx_export import FP32_TOLERANCE, ExportedModel, write_checked_onnx
from simclr.export.repository import RepositoryModel, ServingOptions, add_version
from simclr.finetune.config import FinetuneConfig
from simclr.finetune.loop import CHECKPOINT_KIND
from simclr.finetune.model import Classifier, UInt8Classifier, kept_head
from simclr.train.checkpoint import CheckpointError, checkpoint_sha256, load_checkpoint, resolve_checkpoint
from simclr.train.model import ResNetEncoder

LOGITS_NAME = "logits"
PROBABILITIES_NAME = "probabilities"
CLASSIFIER_OUTPUTS = (OUTPUT_NAME, LOGITS_NAME, PROBABILITIES_NAME)


@dataclass(frozen=True)
class FinetunedRun:
    classifier: Classifier  # eval mode
    config: FinetuneConfig
    classes: tuple[str, ...]
    checkpoint: Path


def load_finetuned(run: Path) -> FinetunedRun:
    """The classifier of a fine-tuning run directory (or its last.pt)."""
    checkpoint = resolve_checkpoint(run)
    state = load_checkpoint(checkpoint)
    if state.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{checkpoint}: not a fine-tuning run (simclr finetune writes one); --classifier "
                              "exports fine-tuned classifiers")
    config = FinetuneConfig.from_dict(state["config"])
    classes = tuple(state["classes"])
    classifier = Classifier(ResNetEncoder(config.model), kept_head(config.model, config.head_layers_kept),
                            len(classes))
    classifier.load_state_dict(state["classifier"])
    return FinetunedRun(classifier.eval(), config, classes, checkpoint)


class _ServedClassifier(nn.Module):
    """uint8 [N, H, W, 3] -> (embedding, logits, softmax probabilities)."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.model = UInt8Classifier(classifier)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        embedding, logits = self.model(image)
        return embedding, logits, torch.softmax(logits, dim=1)


def classifier_metadata(run: FinetunedRun) -> ModelMetadata:
    config = run.config
    recipe = {"task": "classifier", "source": config.source, "data": config.data, "epochs": config.epochs,
              "batch_size": config.batch_size, "optimizer": config.optimizer, "base_lr": config.base_lr,
              "head_layers_kept": config.head_layers_kept, "seed": config.seed}
    return ModelMetadata(image_size=config.image_size, embedding_dim=run.classifier.encoder.feature_dim,
                         architecture=config.model.arch, width=config.model.width, stem=config.model.stem,
                         mean=config.model.mean, std=config.model.std, recipe=recipe,
                         checkpoint_sha256=checkpoint_sha256(run.checkpoint))


def export_classifier_onnx(run: FinetunedRun, out_path: Path, parity_batch: int = 8) -> ExportedModel:
    """Write the classifier as ONNX (outputs embedding, logits, probabilities; the class names in its metadata),
    checked against PyTorch on one seeded uint8 batch (max abs difference of every output at most 1e-4)."""
    size = run.config.image_size
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (parity_batch, size, size, 3), dtype=np.uint8))
    served = _ServedClassifier(run.classifier).eval()
    with torch.no_grad():
        references = dict(zip(CLASSIFIER_OUTPUTS, (output.numpy() for output in served(images)), strict=True))
    metadata = classifier_metadata(run)
    props = {**metadata.to_props(), "classes": json.dumps(list(run.classes))}
    difference = write_checked_onnx(served, images, references, Path(out_path), props, FP32_TOLERANCE)
    return ExportedModel(Path(out_path), metadata, difference, FP32_TOLERANCE)


def export_classifier(run_dir: Path, repo: Path, name: str, options: ServingOptions | None = None,
                      bytes_model: BytesModelOptions | None = BYTES_MODEL_DEFAULTS) -> RepositoryModel:
    """Export a fine-tuning run's classifier as the next version of model `name` in `repo` (config.pbtxt with the
    logits and probabilities outputs and labels.txt), and its NAME_preprocess / NAME_bytes with `bytes_model`."""
    run = load_finetuned(run_dir)
    model = add_version(repo, name, options or ServingOptions(), lambda path: export_classifier_onnx(run, path),
                        classes=run.classes)
    if bytes_model is not None:
        write_bytes_models(repo, name, bytes_model)
    return model
