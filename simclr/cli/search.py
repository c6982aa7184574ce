"""`simclr index` and `simclr-search` (also `simclr search`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

import typer

from simclr.cli.common import print_json, setup_logging, user_errors
from simclr.cli.options import with_encoder_options
from simclr.data.images import NoImagesError
from simclr.embed.encoder import EncoderError, EncoderSpec
from simclr.embed.features import load_features
from simclr.search.index import KINDS, build_index, index_path, save_index

Option = typer.Option


def index_command(
    features: Annotated[Path, typer.Argument(help="Features written by simclr-embed.")] = Path("feats.npy"),
    kind: Annotated[Literal[KINDS], Option(help="auto is exact (flat) up to 50,000 vectors, IVF above.")] = "auto",
    nlist: Annotated[int | None, Option(min=1, help="IVF lists. [default: 4 sqrt(N)]")] = None,
    target_recall: Annotated[float, Option(help="Approximate indexes: raise nprobe until recall@10 on a sample "
                                                "reaches this.")] = 0.95,
    json_output: Annotated[bool, Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Build the FAISS index of feats.npy (cosine similarity) and save it beside it as feats.faiss."""
    setup_logging()
    with user_errors():
        loaded = load_features(features)
        index, report = build_index(loaded.vectors, kind, nlist, target_recall=target_recall)
        save_index(index, features, report)
    if json_output:
        print_json({"index": str(index_path(features)), **dataclasses.asdict(report)})
        return
    recall = "" if report.recall_at_10 is None else \
        f", recall@10 {report.recall_at_10:.3f} vs exact (nprobe {report.nprobe} of {report.nlist} lists)"
    typer.echo(f"{report.kind} index of {report.vectors} x {report.dim} in {report.build_seconds:.1f} s{recall} "
               f"-> {index_path(features)}")


@with_encoder_options
def search_command(
    queries: Annotated[list[Path], typer.Argument(help="Query images, or folders of them.")],
    index: Annotated[Path, Option("--index", help="Features of the collection (feats.npy); its index feats.faiss "
                                                  "is built (exact) and saved when missing, or rebuilt when stale.")
                     ] = Path("feats.npy"),
    k: Annotated[int, Option("-k", min=1, max=1000, help="Neighbours per query.")] = 10,
    grid: Annotated[Path | None, Option(help="Also write a PNG contact sheet: each query and its neighbours.")
                    ] = None,
    *,
    encoder: EncoderSpec,
    json_output: Annotated[bool, Option("--json", help="Print results as JSON on stdout.")] = False,
) -> None:
    """Find the images of the index most similar to each query (cosine similarity); prints rank, score, path.

    Queries are embedded with the index's own model (the one recorded in its sidecar, unless --model or
    --server names another, which must be the same model).
    """
    from simclr.search.grid import neighbour_grid
    from simclr.search.query import ModelMismatchError, open_index, query_encoder, search_images

    setup_logging()
    with user_errors(EncoderError, ModelMismatchError, NoImagesError):
        features, faiss_index = open_index(index)
        model = query_encoder(features, encoder)
        results = search_images(queries, features, faiss_index, model, k)
        if grid:
            neighbour_grid(results, grid)
    if json_output:
        print_json({"index": str(index), "model": model.identity.as_dict(),
                    "results": [dataclasses.asdict(result) for result in results]})
        return
    for result in results:
        typer.echo(f"query {result.query}" + (f": unreadable ({result.error})" if result.error else ""))
        for neighbour in result.neighbours:
            typer.echo(f"  {neighbour.rank:>3}  {neighbour.score:.4f}  {neighbour.path}")
    if grid:
        typer.echo(f"grid -> {grid}", err=True)
