"""`simclr merge`: the parts of a sharded simclr-embed run -> the feats.npy and sidecar one run would have written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simclr.cli.common import print_json, setup_logging, user_errors

Option = typer.Option


def merge_command(
    parts: Annotated[list[Path], typer.Argument(help="The N parts: feats-0-of-N.npy ... feats-(N-1)-of-N.npy, in any "
                                                     "order (their sidecars beside them).")],
    out: Annotated[Path, Option(help="The merged features file; its sidecar goes beside it.")] = Path("feats.npy"),
    json_output: Annotated[bool, Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Merge the N parts of `simclr-embed --shard K/N` jobs: checks that all N are there, finished, from the same
    model, inputs and image list, then streams them into OUT exactly as one unsharded run would have written it.
    An index built over the parts (simclr index feats-*-of-N.npy: feats-of-N.faiss beside them) follows: its rows
    are renumbered to OUT's and it is saved beside OUT (feats.faiss), bound to it."""
    from simclr.embed.shards import merge_shards
    from simclr.search.indexing import index_after_merge

    setup_logging()
    with user_errors():
        result = merge_shards(parts, out)
        index = index_after_merge(parts, result.features, result.part_rows)
    summary = {"features": str(result.features), "sidecar": str(result.sidecar), "rows": result.rows,
               "failed": result.failed, "parts": result.parts, "index": index and str(index)}
    if json_output:
        print_json(summary)
    else:
        typer.echo(f"merged {result.parts} parts: {result.rows} rows ({result.failed} failed) -> {result.features}, "
                   f"{result.sidecar}" + (f"; their index follows: {index}" if index else ""))
