"""`simclr probe`: linear probe and kNN of an encoder (or a baseline) on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from simclr.cli.common import print_json, setup_logging, user_errors
from simclr.cli.options import (
    DeviceOption,
    ModelNameOption,
    ModelOption,
    ModelVersionOption,
    ProtocolOption,
    ServerOption,
)
from simclr.data.images import NoImagesError
from simclr.embed.encoder import Encoder, EncoderError, open_encoder

Option = typer.Option
BASELINES = ("random", "pixels")


def _encoder(model, server, protocol, model_name, model_version, checkpoint, baseline, device) -> Encoder:
    from simclr.embed.torch_encoder import PixelEncoder, TorchEncoder, model_config_from_metadata

    torch_device = "cuda" if device == "cuda" else "cpu"
    if baseline not in (None, *BASELINES):
        raise ValueError(f"--baseline {baseline!r}: random or pixels")
    if checkpoint:
        trained = TorchEncoder.from_checkpoint(checkpoint, torch_device)
        if baseline is None:
            return trained
        config, size = trained.model_config, trained.identity.image_size
    else:
        reference = open_encoder(model, server, protocol, model_name, model_version, device)
        if baseline is None:
            return reference
        size, metadata = reference.identity.image_size, reference.metadata
        if baseline == "random" and metadata is None:
            raise ValueError("--baseline random needs the architecture, and this model does not record one")
        config = model_config_from_metadata(metadata) if metadata else None
    return PixelEncoder(size) if baseline == "pixels" else TorchEncoder.random(config, size, device=torch_device)


def probe_command(
    data: Annotated[str | None, Option(help="cifar10, cifar100 or stl10 from --data-root (train and test splits).")
                    ] = None,
    data_root: Annotated[Path | None, Option(help="Folder with torchvision's files for --data.")] = None,
    train: Annotated[Path | None, Option(help="ImageFolder tree of the labelled train split (DIR/<class>/...).")
                     ] = None,
    test: Annotated[Path | None, Option(help="ImageFolder tree of the test split (same class names).")] = None,
    train_features: Annotated[Path | None, Option(help="Precomputed train features (feats.npy of an ImageFolder "
                                                       "tree); classes come from its sidecar.")] = None,
    test_features: Annotated[Path | None, Option(help="Precomputed test features.")] = None,
    model: ModelOption = None,
    server: ServerOption = None,
    protocol: ProtocolOption = "http",
    model_name: ModelNameOption = None,
    model_version: ModelVersionOption = "",
    checkpoint: Annotated[Path | None, Option(help="A training checkpoint (or run directory) to evaluate in PyTorch.")
                          ] = None,
    baseline: Annotated[str | None, Option(help="random: the same architecture with random weights; pixels: raw "
                                                "pixels at the model's image size.")] = None,
    l2: Annotated[list[float] | None, Option(help="L2 strengths to choose from on a held-out 20% of train "
                                                  "(repeat the option). [default: 1e-6 ... 1e-2]")] = None,
    knn_k: Annotated[int, Option(help="Neighbours of the kNN classifier.")] = 200,
    knn_temperature: Annotated[float, Option(help="Temperature of the kNN vote weights.")] = 0.1,
    limit_train: Annotated[int | None, Option(help="Use a seeded random subset of this many train images.")] = None,
    limit_test: Annotated[int | None, Option(help="Use a seeded random subset of this many test images.")] = None,
    seed: Annotated[int, Option(help="Seed of the held-out split and the subsets.")] = 0,
    device: DeviceOption = "auto",
    confusion: Annotated[Path | None, Option(help="Write the linear classifier's confusion matrix as a PNG.")] = None,
    json_output: Annotated[bool, Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Linear evaluation (logistic regression on frozen, standardised features; top-1/top-5) and weighted kNN
    (cosine, k=200, T=0.1; top-1) of an encoder on a labelled train/test split."""
    from simclr.evaluate.linear import L2_GRID
    from simclr.evaluate.probe import confusion_matrix, evaluate_features, plot_confusion
    from simclr.train.checkpoint import CheckpointError

    setup_logging()
    sources = [data is not None, train is not None or test is not None,
               train_features is not None or test_features is not None]
    with user_errors(EncoderError, CheckpointError, NoImagesError):
        if sum(sources) != 1:
            raise ValueError("give one labelled source: --data NAME --data-root DIR, --train DIR --test DIR, or "
                             "--train-features F --test-features F")
        if train_features or test_features:
            train_set, test_set = _precomputed(train_features, test_features)
            identity = {"features": str(train_features)}
        else:
            encoder = _encoder(model, server, protocol, model_name, model_version, checkpoint, baseline, device)
            identity = encoder.identity.as_dict()
            if data:
                train_set, test_set = _torchvision_sets(data, data_root, encoder, limit_train, limit_test, seed)
            else:
                train_set, test_set = _folder_sets(train, test, encoder)
        train_set, test_set = _limit(train_set, limit_train, seed), _limit(test_set, limit_test, seed)
        report = evaluate_features(train_set.features, train_set.labels, test_set.features, test_set.labels,
                                   len(train_set.classes), tuple(l2) if l2 else L2_GRID, knn_k, knn_temperature,
                                   seed, "cuda" if device == "cuda" else "cpu")
        if confusion:
            matrix = confusion_matrix(test_set.labels, report.predictions, len(train_set.classes))
            plot_confusion(matrix, train_set.classes, confusion,
                           f"linear probe top-1 {100 * report.linear_top1:.1f}%")
    summary = {"linear_top1": report.linear_top1, "linear_top5": report.linear_top5, "knn_top1": report.knn_top1,
               "n_train": report.n_train, "n_test": report.n_test, "classes": list(train_set.classes),
               "model": identity, "baseline": baseline, "l2": report.l2,
               "validation_top1": {str(k): v for k, v in report.validation_top1.items()},
               "knn": {"k": knn_k, "temperature": knn_temperature}, "fit_seconds": report.seconds}
    if json_output:
        print_json(summary)
        return
    name = baseline or identity.get("name") or identity.get("features")
    typer.echo(f"{name}: linear top-1 {100 * report.linear_top1:.2f}%  top-5 {100 * report.linear_top5:.2f}%  "
               f"kNN top-1 {100 * report.knn_top1:.2f}%  (L2 {report.l2:g}; {report.n_train} train, "
               f"{report.n_test} test, {len(train_set.classes)} classes)")


def _precomputed(train_features: Path | None, test_features: Path | None):
    from simclr.embed.labelled import features_file

    if not (train_features and test_features):
        raise ValueError("--train-features and --test-features go together")
    train_set = features_file(train_features)
    return train_set, features_file(test_features, train_set.classes)


def _torchvision_sets(data: str, data_root: Path | None, encoder: Encoder, limit_train: int | None,
                      limit_test: int | None, seed: int):
    from simclr.data.datasets import TORCHVISION_DATASETS, torchvision_split
    from simclr.embed.labelled import embed_arrays

    if data not in TORCHVISION_DATASETS:
        raise ValueError(f"--data {data!r}: cifar10, cifar100 or stl10 (or use --train/--test folders)")
    if data_root is None:
        raise ValueError(f"--data {data} needs --data-root DIR")
    sets = []
    for split_name, limit in (("train", limit_train), ("test", limit_test)):
        split = torchvision_split(data, data_root, train=split_name == "train")
        split = split.subset(limit, seed) if limit else split
        sets.append(embed_arrays(split.images.permute(0, 2, 3, 1).numpy(), split.labels.numpy(), split.classes,
                                 encoder, description=f"embedding {data} {split_name}"))
    return tuple(sets)


def _folder_sets(train: Path | None, test: Path | None, encoder: Encoder):
    from simclr.embed.labelled import embed_folder, folder_classes

    if not (train and test):
        raise ValueError("--train and --test go together")
    classes = folder_classes(train)
    return embed_folder(train, classes, encoder), embed_folder(test, classes, encoder)


def _limit(features, limit: int | None, seed: int):
    """A seeded subset of at most `limit` rows (features that were not already subset at load)."""
    from simclr.embed.labelled import LabelledFeatures

    if not limit or len(features.labels) <= limit:
        return features
    keep = np.sort(np.random.default_rng(seed).permutation(len(features.labels))[:limit])
    return LabelledFeatures(features.features[keep], features.labels[keep], features.classes)
