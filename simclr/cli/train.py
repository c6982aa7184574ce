"""`simclr train`: parse options into a TrainConfig and run the trainer."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer

from simclr.cli.common import fail, print_json, setup_logging, user_errors

Option = typer.Option


def train_command(
    data: Annotated[str, Option(help="Training images: cifar10, cifar100, stl10 (from --data-root) or a folder "
                                     "of images, searched recursively; labels are not used.")],
    out: Annotated[Path, Option(help="Run directory: last.pt, config.json, metrics.jsonl, training_curves.png.")],
    data_root: Annotated[Path | None, Option(help="Folder holding torchvision's files for --data cifar10/cifar100/"
                                                  "stl10 (e.g. what ../shared/data/cifar10.py batches DIR writes).")
                         ] = None,
    preset: Annotated[str | None, Option(help="Recipe defaults. cifar: 32 px, CIFAR stem, colour strength 0.5, no "
                                              "blur, tau 0.5, weight decay 1e-4 (the paper's CIFAR recipe; decay as "
                                              "google-research/simclr's CIFAR command and solo-learn). imagenet: 224 "
                                              "px, standard stem, strength 1.0, blur p=0.5, tau 0.1, decay 1e-6 (the "
                                              "paper's ImageNet recipe at batch 4096). photo: 64 px, small stem, the "
                                              "ImageNet augmentation and mean/std, tau 0.2, decay 1e-4 (for small "
                                              "photos such as Tiny ImageNet; tau and decay as solo-learn). "
                                              "[default: cifar when --image-size <= 64, else imagenet]")] = None,
    arch: Annotated[str | None, Option(help="Encoder f: resnet18, resnet34 or resnet50. [default: resnet18]")] = None,
    stem: Annotated[str | None, Option(help="First layer of f. cifar: 3x3 conv, stride 1, no max-pool (32 px "
                                            "images). small: 3x3 conv, stride 2, no max-pool (64 px photos: 32x32 "
                                            "maps). imagenet: 7x7 conv, stride 2, max-pool (224 px). [default: cifar; "
                                            "small for photo; imagenet for imagenet]")] = None,
    width: Annotated[float | None, Option(help="Channel width multiplier of f (0.25 = a quarter of the channels). "
                                               "[default: 1.0]")] = None,
    image_size: Annotated[int | None, Option(help="Side of the augmented views in pixels. [default: 32 cifar, 64 "
                                                  "photo, 224 imagenet]")] = None,
    decode_size: Annotated[int | None, Option(help="Folder images are decoded (shorter side + centre crop) to this "
                                                   "square before cropping. [default: image size, or x256/224 above "
                                                   "64 px]")] = None,
    batch_size: Annotated[int | None, Option(help="Global batch (all processes together); the paper uses 4096. "
                                                  "[default: 512]")] = None,
    epochs: Annotated[int | None, Option(help="Epochs; sets the length of the cosine schedule. [default: 100]")] = None,
    max_steps: Annotated[int | None, Option(help="Stop after this many optimiser steps, saving a resumable "
                                                 "checkpoint (smoke runs, benchmarks). [default: no limit]")] = None,
    resume: Annotated[bool, Option(help="Continue the run in --out from last.pt exactly where it stopped; the "
                                        "recipe comes from the run, only --max-steps, --workers, "
                                        "--save-every-minutes, --log-every, --knn-every and --device may change."
                                   )] = False,
    temperature: Annotated[float | None, Option(help="NT-Xent temperature tau (solo-learn uses 0.2 on short "
                                                     "schedules). [default: 0.5 cifar, 0.2 photo, 0.1 imagenet]")
                           ] = None,
    optimizer: Annotated[str | None, Option(help="lars, sgd or adamw. [default: lars]")] = None,
    base_lr: Annotated[float | None, Option(help="Learning rate per 256 images: lr = base x batch/256 (or x sqrt"
                                                 "(batch/256) with --lr-scaling sqrt). [default: 0.3]")] = None,
    lr_scaling: Annotated[str | None, Option(help="linear or sqrt. [default: linear]")] = None,
    weight_decay: Annotated[float | None, Option(help="Weight decay (not on biases and norm parameters). "
                                                    "[default: 1e-4 cifar and photo, 1e-6 imagenet; see --preset]")
                            ] = None,
    warmup_epochs: Annotated[float | None, Option(help="Linear warm-up epochs before the cosine decay. [default: 10]")
                             ] = None,
    color_strength: Annotated[float | None, Option(help="Colour distortion strength s. [default: 0.5 cifar, 1.0 "
                                                        "photo and imagenet]")] = None,
    blur_p: Annotated[float | None, Option(help="Gaussian blur probability (kernel 10% of the side). [default: "
                                                "0 cifar, 0.5 photo and imagenet]")] = None,
    head_hidden: Annotated[int | None, Option(help="Hidden width of g (0: the encoder's dimension D, as the paper; "
                                                   "solo-learn uses 2048). [default: 0]")] = None,
    head_out: Annotated[int | None, Option(help="Output dimension of g (solo-learn uses 256). [default: 128]")
                        ] = None,
    head_layers: Annotated[int | None, Option(help="Linear layers in g. [default: 2]")] = None,
    head_batch_norm: Annotated[bool | None, Option("--head-batch-norm/--no-head-batch-norm",
                                                   help="Batch norm in g's hidden layers. [default: on]")] = None,
    sync_batch_norm: Annotated[bool | None, Option("--sync-batch-norm/--no-sync-batch-norm",
                                                   help="Global batch norm across processes under torchrun. "
                                                        "[default: on]")] = None,
    precision: Annotated[str | None, Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16 (with a "
                                                 "gradient scaler). [default: auto]")] = None,
    channels_last: Annotated[bool | None, Option("--channels-last/--no-channels-last",
                                                 help="channels_last memory format. [default: on for CUDA]")] = None,
    compile: Annotated[bool | None, Option("--compile/--no-compile",
                                           help="torch.compile the model (slow start, faster steps). "
                                                "[default: off]")] = None,
    device: Annotated[str | None, Option(help="auto, cpu, cuda or cuda:N. [default: auto]")] = None,
    workers: Annotated[int | None, Option(help="Decoding processes for folder data. [default: 2]")] = None,
    in_memory: Annotated[bool | None, Option("--in-memory/--no-in-memory",
                                             help="Decode folder data once into memory (uint8) instead of every "
                                                  "epoch. [default: when it fits in half the free memory]")] = None,
    seed: Annotated[int | None, Option(help="Seed for weights, shuffling and augmentation. [default: 0]")] = None,
    save_every_minutes: Annotated[float | None, Option(help="Also save last.pt on this timer (0: only at epoch "
                                                            "ends and on SIGINT/SIGTERM). [default: 0]")] = None,
    log_every: Annotated[int | None, Option(help="Steps between metrics.jsonl lines. [default: 10]")] = None,
    knn_every: Annotated[int | None, Option(help="Measure kNN top-1 every N epochs (0: never). [default: 0]")] = None,
    knn_data: Annotated[str | None, Option(help="Labelled set for the kNN monitor: cifar10, cifar100, stl10 or a "
                                                "folder with train/ and test/ class folders. [default: --data]")
                        ] = None,
    knn_samples: Annotated[int | None, Option(help="Train images in the kNN memory (a fifth as many queries). "
                                                   "[default: 10000]")] = None,
    json_output: Annotated[bool, Option("--json", help="Print the run summary as JSON on stdout.")] = False,
) -> None:
    """Pre-train an encoder with SimCLR (two augmented views, ResNet f, MLP head g, NT-Xent, LARS).

    Distributed: torchrun --nproc-per-node K -m simclr train ... (NCCL on GPUs, gloo on CPUs).
    """
    from simclr.train.checkpoint import CheckpointError
    from simclr.train.config import build_config
    from simclr.train.loop import TrainingError, TrainingInterrupted, run_config, train

    setup_logging()
    overrides = {
        "data": data, "data_root": str(data_root) if data_root else None, "decode_size": decode_size,
        "batch_size": batch_size, "epochs": epochs, "max_steps": max_steps, "temperature": temperature,
        "seed": seed, "workers": workers, "in_memory": in_memory, "precision": precision,
        "channels_last": channels_last, "compile": compile, "sync_batch_norm": sync_batch_norm,
        "save_every_minutes": save_every_minutes, "log_every": log_every, "knn_every": knn_every,
        "knn_data": knn_data, "knn_samples": knn_samples, "device": device,
        "augment.image_size": image_size, "augment.color_strength": color_strength, "augment.blur_p": blur_p,
        "model.arch": arch, "model.stem": stem, "model.width": width, "model.head_hidden": head_hidden,
        "model.head_out": head_out, "model.head_layers": head_layers, "model.head_batch_norm": head_batch_norm,
        "optim.optimizer": optimizer, "optim.base_lr": base_lr, "optim.lr_scaling": lr_scaling,
        "optim.weight_decay": weight_decay, "optim.warmup_epochs": warmup_epochs,
    }
    with user_errors(CheckpointError, TrainingError):
        config = None if resume else build_config(preset, overrides)
        config = run_config(out, config, resume, overrides)
        try:
            result = train(config, out, resume=resume)
        except TrainingInterrupted as stopped:
            raise fail(str(stopped), code=130) from None
    if os.environ.get("RANK", "0") != "0":
        return
    summary = {key: str(value) if isinstance(value, Path) else value
               for key, value in dataclasses.asdict(result).items()}
    if json_output:
        print_json(summary)
    else:
        typer.echo(f"trained {result.steps} steps ({result.epochs_completed} epochs) in {result.wall_seconds:.0f} s: "
                   f"loss {result.loss:.4f}, contrastive accuracy {result.contrastive_accuracy:.3f}, "
                   f"{result.images_per_second:.0f} images/s -> {out}")
