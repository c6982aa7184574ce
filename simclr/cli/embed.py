"""`simclr-embed` (and `simclr embed`): images -> feats.npy + feats.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simclr.cli.common import fail, print_json, setup_logging, user_errors
from simclr.cli.options import with_encoder_options
from simclr.data.images import NoImagesError
from simclr.embed.encoder import EncoderError, EncoderSpec
from simclr.embed.runner import embed_images
from simclr.embed.shards import parse_shard, shard_path
from simclr.lifetime import stopped_by_signals
from simclr.progress import significant

Option = typer.Option

@with_encoder_options
def embed_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and folders (searched recursively).")],
    out: Annotated[Path, Option(help="Features file (float32 [N, D]); the sidecar goes beside it as .jsonl.")
                   ] = Path("feats.npy"),
    *,
    encoder: EncoderSpec,
    batch_size: Annotated[int, Option(min=1, help="Images per encoder call.")] = 256,
    workers: Annotated[int | None, Option(min=0, help="Decoding processes (0: decode in this process). [default: all "
                                               "cores]")] = None,
    normalize: Annotated[bool, Option("--normalize/--no-normalize", help="L2-normalise each row.")] = False,
    resume: Annotated[bool, Option(help="Continue an interrupted run of the same command from where it stopped.")
                      ] = False,
    strict: Annotated[bool, Option(help="Exit with status 1 when any image cannot be decoded (the outputs are "
                                        "still written).")] = False,
    shard: Annotated[str | None, Option(help="K/N: run job K of N (from 0), embedding every N-th image of the sorted "
                                             "list from the K-th, into OUT's stem + -K-of-N.npy; simclr merge joins "
                                             "the N parts. [default: the whole list]")] = None,
    json_output: Annotated[bool, Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Embed image files and folders with the encoder: writes feats.npy (row i = image i) and feats.jsonl.

    Unreadable images are skipped, recorded with their reason in the sidecar and counted in the summary.
    """
    setup_logging()
    with user_errors(EncoderError, NoImagesError):
        part = parse_shard(shard) if shard is not None else None
        model = encoder.open()
        with stopped_by_signals() as stopped:
            try:
                result = embed_images(images, out, model, batch_size, workers, normalize, resume, shard=part)
            except KeyboardInterrupt:
                partial = shard_path(out, *part) if part else out
                raise fail(f"stopped by {stopped.name}; what was embedded is kept in {partial}.partial: run the "
                           "same command with --resume to continue", 128 + stopped.value) from None
    summary = {"features": str(result.features), "sidecar": str(result.sidecar), "rows": result.rows,
               "failed": result.failed, "failures": [{"path": p, "error": e} for p, e in result.failures],
               "seconds": result.seconds, "images_per_second": result.images_per_second,
               "model": model.identity.as_dict()}
    if json_output:
        print_json(summary)
    else:
        for path, error in result.failures:
            typer.echo(f"skipped {path}: {error}", err=True)
        typer.echo(f"embedded {result.rows} images ({result.failed} failed) with {model.identity.name} "
                   f"v{model.identity.version} in {result.seconds:.1f} s "
                   f"({significant(result.images_per_second)} images/s) "
                   f"-> {result.features}, {result.sidecar}")
    if strict and result.failed:
        raise fail(f"--strict: {result.failed} images could not be decoded (listed in {result.sidecar})")
