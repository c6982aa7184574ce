"""`simclr finetune`: fine-tune a pre-trained encoder on a few labels into a classifier (SimCLR's semi-supervised
protocol), optionally against the baselines on the same labels."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Annotated

import typer

from simclr.cli.common import fail, print_json, setup_logging, user_errors
from simclr.cli.options import with_recipe_options
from simclr.finetune.config import FinetuneConfig
from simclr.train.config import recipe_options

Option = typer.Option
RECIPE = [option for option in recipe_options(FinetuneConfig) if "." not in option.key]


@with_recipe_options(RECIPE)
def finetune_command(
    out: Annotated[Path, Option(help="Run directory: labelled_images.txt, last.pt, config.json, metrics.jsonl, "
                                     "training_curves.png, confusion.png, results.json, README.md.")],
    source: Annotated[Path | None, typer.Argument(help="The pre-trained model: a training checkpoint (last.pt) or "
                                                       "its run directory (f and g), or an exported model directory "
                                                       "such as model_repository/simclr_resnet18_photo (f read back "
                                                       "from its ONNX).", show_default=False)] = None,
    resume: Annotated[bool, Option(help="Continue the run in --out exactly where it stopped (its recipe and "
                                        "labelled images; SOURCE may be left out). With --compare, the from-scratch "
                                        "run resumes too.")] = False,
    compare: Annotated[bool, Option(help="Also train the same network from random weights with the same schedule "
                                         "(in --out/scratch/) and fit the linear probe of the pre-trained encoder, "
                                         "all on the same labelled images: one table.")] = False,
    json_output: Annotated[bool, Option("--json", help="Print the results as JSON on stdout: {\"finetune\": "
                                                       "{\"top1\", \"top5\", ...}, \"scratch\": {...}, \"linear\": "
                                                       "{...}} (fractions in [0, 1]).")] = False,
    **recipe: typing.Any,
) -> None:
    """Fine-tune a pre-trained encoder on labelled images: f (plus the kept layers of g) and a zero-initialised
    linear classifier, trained end to end with cross-entropy, batch norm in train mode, crops and flips only (SimCLR
    v1 appendix B.5; SimCLRv2 section 4). Evaluated on the test split: top-1, top-5, per class, confusion matrix.

    Distributed: torchrun --nproc-per-node K -m simclr finetune ... (NCCL on GPUs, gloo on CPUs).
    """
    from simclr.finetune.run import finetune_and_compare, new_config, resumed_config
    from simclr.train.checkpoint import CheckpointError
    from simclr.train.epochs import TrainingError, TrainingInterrupted

    setup_logging()
    options = {option.key: recipe[option.name] for option in RECIPE}
    with user_errors(CheckpointError, TrainingError):
        if resume:
            config = resumed_config(out, options)
        elif source is None:
            raise ValueError("give the pre-trained model (SOURCE) for a new run")
        else:
            config = new_config(source, options)
        try:
            results = finetune_and_compare(config, out, resume=resume, compare=compare)
        except TrainingInterrupted as stopped:
            raise fail(str(stopped), code=130) from None
    if os.environ.get("RANK", "0") != "0":
        return
    if json_output:
        print_json(results)
        return
    for key, name in (("finetune", "fine-tuned"), ("scratch", "from random weights"), ("linear", "linear probe")):
        if key in results:
            typer.echo(f"{name:>20}: top-1 {100 * results[key]['top1']:.2f}%  top-5 {100 * results[key]['top5']:.2f}%")
    typer.echo(f"{results['labelled_images']} labelled images, {len(results['classes'])} classes -> {out}")
