"""`simclr probe`: linear probe and kNN of an encoder (or a baseline) on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from simclr.cli.common import print_json, setup_logging, user_errors
from simclr.cli.options import with_encoder_options
from simclr.data.images import NoImagesError
from simclr.embed.encoder import EncoderError, EncoderSpec

Option = typer.Option


@with_encoder_options
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
    *,
    encoder: EncoderSpec,
    checkpoint: Annotated[Path | None, Option(help="A training checkpoint (or run directory) to evaluate in PyTorch.")
                          ] = None,
    image_size: Annotated[int | None, Option(min=16, help="For --checkpoint: embed at this side in pixels (f is "
                                                        "convolutional with global pooling, so any size runs; an "
                                                        "exported model's size is fixed: re-export it with simclr "
                                                        "export --image-size). [default: its training size]")
                          ] = None,
    baseline: Annotated[Literal["random", "pixels"] | None,
                        Option(help="random: the same architecture with random weights; pixels: raw pixels at the "
                                    "model's image size.")] = None,
    l2: Annotated[list[float] | None, Option(help="L2 strengths to choose from on a held-out 20% of train "
                                                  "(repeat the option), searched as given. [default: 1e-6 ... 1e-2, "
                                                  "widened by 10x past an edge, up to 4 times, while the best is "
                                                  "there with validation top-1 still rising]")] = None,
    knn_k: Annotated[int, Option(min=1, help="Neighbours of the kNN classifier.")] = 200,
    knn_temperature: Annotated[float, Option(help="Temperature of the kNN vote weights.")] = 0.1,
    limit_train: Annotated[int | None, Option(min=1, help="Use a seeded random subset of this many train images.")
                           ] = None,
    limit_test: Annotated[int | None, Option(min=1, help="Use a seeded random subset of this many test images.")
                          ] = None,
    seed: Annotated[int, Option(help="Seed of the held-out split and the subsets.")] = 0,
    labels_file: Annotated[Path | None, Option(help="Train only on the images a labelled_images.txt names (simclr "
                                                    "finetune writes one), to compare with fine-tuning on the same "
                                                    "labels.")] = None,
    confusion: Annotated[Path | None, Option(help="Write the linear classifier's confusion matrix as a PNG.")] = None,
    json_output: Annotated[bool, Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Linear evaluation (logistic regression on frozen, standardised features; top-1/top-5) and weighted kNN
    (cosine, k=200, T=0.1; top-1) of an encoder on a labelled train/test split."""
    from simclr.embed.labelled import check_labelled_source, evaluation_encoder, labelled_sets
    from simclr.evaluate.probe import confusion_matrix, evaluate_features
    from simclr.plots import plot_confusion
    from simclr.train.checkpoint import CheckpointError

    setup_logging()
    with user_errors(EncoderError, CheckpointError, NoImagesError):
        if knn_temperature <= 0:
            raise ValueError(f"--knn-temperature {knn_temperature}: must be positive")
        for strength in l2 or ():
            if strength < 0:
                raise ValueError(f"--l2 {strength:g}: must be 0 or more")
        check_labelled_source(data=data, train=train, test=test, train_features=train_features,
                              test_features=test_features, limit_train=limit_train, limit_test=limit_test)
        if image_size is not None and checkpoint is None:
            raise ValueError(f"--image-size {image_size}: only with --checkpoint (an exported model's input size is "
                             "fixed: re-export it with simclr export --image-size)")
        precomputed = train_features is not None or test_features is not None
        model = None if precomputed else evaluation_encoder(encoder, checkpoint, baseline, image_size)
        train_set, test_set = labelled_sets(model, data=data, data_root=data_root, train=train, test=test,
                                            train_features=train_features, test_features=test_features,
                                            limit_train=limit_train, limit_test=limit_test, seed=seed,
                                            labels_file=labels_file)
        identity = model.identity.as_dict() if model else {"features": str(train_features)}
        report = evaluate_features(train_set.features, train_set.labels, test_set.features, test_set.labels,
                                   len(train_set.classes), tuple(l2) if l2 else None, knn_k, knn_temperature,
                                   seed, "cuda" if encoder.device == "cuda" else "cpu")
        if confusion:
            matrix = confusion_matrix(test_set.labels, report.predictions, len(train_set.classes))
            plot_confusion(matrix, train_set.classes, confusion,
                           f"linear probe top-1 {100 * report.linear_top1:.1f}%")
    summary = {"linear_top1": report.linear_top1, "linear_top5": report.linear_top5, "knn_top1": report.knn_top1,
               "n_train": report.n_train, "n_test": report.n_test, "classes": list(train_set.classes),
               "model": identity, "baseline": baseline, "l2": report.l2,
               "validation_top1": {str(k): v for k, v in report.validation_top1.items()},
               "l2_tried": list(report.validation_top1), "l2_note": report.l2_note,
               "knn": {"k": knn_k, "temperature": knn_temperature}, "fit_seconds": report.seconds}
    if report.l2_note and l2:  # a grid given is searched as it is: say that it may fall short
        typer.echo(f"warning: {report.l2_note}", err=True)
    if json_output:
        print_json(summary)
        return
    name = baseline or identity.get("name") or identity.get("features")
    typer.echo(f"{name}: linear top-1 {100 * report.linear_top1:.2f}%  top-5 {100 * report.linear_top5:.2f}%  "
               f"kNN top-1 {100 * report.knn_top1:.2f}%  (L2 {report.l2:g}; {report.n_train} train, "
               f"{report.n_test} test, {len(train_set.classes)} classes)")
    if report.l2_note and not l2:
        typer.echo(f"note: {report.l2_note}")
