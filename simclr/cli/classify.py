"""`simclr classify`: image files -> top-k class names and probabilities, with an exported classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simclr.cli.common import print_json, setup_logging, user_errors
from simclr.cli.options import with_encoder_options
from simclr.data.images import NoImagesError
from simclr.embed.encoder import EncoderError, EncoderSpec

Option = typer.Option


@with_encoder_options
def classify_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and folders (searched recursively).")],
    *,
    encoder: EncoderSpec,
    top_k: Annotated[int, Option("--top-k", "-k", min=1, help="Classes shown per image.")] = 5,
    batch_size: Annotated[int, Option(min=1, help="Images per model call.")] = 256,
    workers: Annotated[int | None, Option(min=0, help="Decoding processes (0: decode in this process). [default: all "
                                               "cores]")] = None,
    json_output: Annotated[bool, Option("--json", help="Print {\"model\" (its embedding_dim: the width of its "
                                                       "embedding output; num_classes), \"images\": [{\"path\", "
                                                       "\"top\": [{\"class\", \"probability\"}]} or {\"path\", "
                                                       "\"error\"}]} on stdout.")] = False,
) -> None:
    """Classify image files with a fine-tuned classifier (simclr export RUN_DIR --classifier): the top-k classes
    and their probabilities per image. --model runs it here; --server asks Triton (--send bytes sends the files)."""
    from simclr.embed.classify import classify, open_classifier

    setup_logging()
    with user_errors(EncoderError, NoImagesError):
        model = open_classifier(encoder)
        predictions = list(classify(images, model, top_k, batch_size, workers))
    if json_output:
        # identity.embedding_dim is the width of what the model returns here (one probability per class)
        print_json({"model": {**model.identity.as_dict(), "num_classes": len(model.classes),
                              "embedding_dim": model.metadata.embedding_dim if model.metadata else None},
                    "images": [p.as_dict() for p in predictions]})
        return
    for prediction in predictions:
        if prediction.error:
            typer.echo(f"{prediction.path}: skipped ({prediction.error})", err=True)
        else:
            shown = ", ".join(f"{name} {probability:.3f}" for name, probability in prediction.top)
            typer.echo(f"{prediction.path}: {shown}")
