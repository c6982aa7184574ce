"""`simclr train`: options derived from the recipe (TrainConfig's fields), parsed into a config, run."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Annotated

import typer

from simclr.cli.common import fail, print_json, setup_logging, user_errors
from simclr.cli.options import with_recipe_options
from simclr.progress import significant
from simclr.train.config import recipe_options

Option = typer.Option
RECIPE = recipe_options()


@with_recipe_options(RECIPE)
def train_command(
    out: Annotated[Path, Option(help="Run directory: last.pt, config.json, metrics.jsonl, training_curves.png.")],
    resume: Annotated[bool, Option(help="Continue the run in --out from last.pt (or a slim checkpoint: fresh "
                                        "momentum) where it stopped, to its planned end. The recipe is the run's: "
                                        "--data may be left out or name the same images in another place, "
                                        "--epochs may grow (the cosine is re-planned), and any other recipe option "
                                        "that differs from the run's is refused; --max-steps, --workers, "
                                        "--save-every-minutes, --log-every, --knn-every, --device, --compile, "
                                        "--compile-mode and --train-step may change."
                                   )] = False,
    json_output: Annotated[bool, Option("--json", help="Print the run summary as JSON on stdout.")] = False,
    **recipe: typing.Any,
) -> None:
    """Pre-train an encoder with SimCLR (two augmented views, ResNet f, MLP head g, NT-Xent, LARS).

    Distributed: torchrun --nproc-per-node K -m simclr train ... (NCCL on GPUs, gloo on CPUs).
    """
    from simclr.train.checkpoint import CheckpointError
    from simclr.train.config import build_config
    from simclr.train.epochs import TrainingError, TrainingInterrupted
    from simclr.train.loop import init_model_settings, run_config, train

    setup_logging()
    overrides = {option.key: recipe[option.name] for option in RECIPE}
    with user_errors(CheckpointError, TrainingError):
        if resume:
            config = run_config(out, None, resume, overrides)
        else:
            if overrides["data"] is None:
                raise ValueError("--data is required for a new run (cifar10, cifar100, stl10 or a folder of images)")
            preset = overrides.pop("preset")
            if overrides["init"] is not None:
                overrides.update(init_model_settings(Path(overrides["init"]), overrides))
            config = run_config(out, build_config(preset, overrides), resume, overrides)
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
    elif result.steps_run == 0:
        typer.echo(f"nothing left to train: {out} has done all {result.planned_steps} planned steps "
                   f"({result.epochs_completed} epochs); resume with a larger --epochs to train longer")
    else:
        typer.echo(f"trained {result.steps_run} steps (step {result.steps} of {result.planned_steps}, "
                   f"{result.epochs_completed} epochs done) in {result.wall_seconds:.0f} s: loss {result.loss:.4f}, "
                   f"contrastive accuracy {result.contrastive_accuracy:.3f}, "
                   f"{significant(result.images_per_second)} images/s -> {out}")
