"""`simclr index` and `simclr-search` (also `simclr search`)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from simclr.cli.common import print_json, setup_logging, shown, user_errors
from simclr.cli.options import with_encoder_options
from simclr.data.images import NoImagesError
from simclr.embed.encoder import EncoderError, EncoderSpec
from simclr.search.plan import KINDS

Option = typer.Option


def index_command(
    features: Annotated[list[Path] | None, typer.Argument(
        help="Features written by simclr-embed (or bare float32 [N, D] .npy files: rows by number, no model "
             "recorded); several are the parts of one collection, rows in that order (e.g. feats-*-of-N.npy). "
             "With --add or --remove: the features file of an index, or the index (.faiss).")] = None,
    out: Annotated[Path | None, Option(help="The index file. [default: beside the first features file, "
                                            "FEATURES.faiss; feats-of-N.faiss for all N parts feats-K-of-N.npy "
                                            "(feats.faiss is their merged file's)]")] = None,
    kind: Annotated[Literal[KINDS], Option(
        help="auto: the first of exact (up to 50,000 vectors), HNSW (up to 1,000,000), IVF and IVF-PQ (codes of 128 "
             "down to 4 bytes, OPQ-rotated at 16x compression and more) that fits --memory-budget; hnsw: FAISS's "
             "graph (the fastest queries, but it holds the full vectors and cannot remove rows).")] = "auto",
    memory_budget: Annotated[str | None, Option(
        help="Peak memory of the whole process while building, as /usr/bin/time -v reports it (e.g. 2G, 512M); "
             "auto picks the index that fits, another kind is refused when it cannot. [default: no limit]")] = None,
    max_query_ms: Annotated[float | None, Option(
        min=0, help="Stop raising nprobe/efSearch when one query would take longer than this; the recall reached "
                    "is reported, and a warning says when the limit is not met (an exact index has nothing to "
                    "lower). [default: no limit]")] = None,
    target_recall: Annotated[float, Option(min=0, max=1, help="Approximate indexes: raise nprobe (IVF) or efSearch "
                                                              "(HNSW) until recall@10 on a sample reaches this.")
                             ] = 0.95,
    nlist: Annotated[int | None, Option(min=1, help="IVF lists. [default: 4 sqrt(N), at most 4,096]")] = None,
    pq_bytes: Annotated[int | None, Option(min=1, help="IVF-PQ sub-quantizers, one code byte each (must divide "
                                                       "the dimension); under 9,984 vectors each gets the fewer bits "
                                                       "the collection can train. [default: the largest that fits]")
                        ] = None,
    add: Annotated[list[Path] | None, Option(help="Append the rows of these features files to the existing index "
                                                  "(same model or width), without rebuilding it. Repeatable.")
                   ] = None,
    remove: Annotated[list[str] | None, Option(help="Take the rows of these image paths out of the existing index "
                                                    "(not possible for hnsw). Repeatable.")] = None,
    forget_removed: Annotated[bool, Option(help="When rebuilding, index again the images that --remove took out of "
                                                "the index being replaced (by default they stay out).")] = False,
    json_output: Annotated[bool, Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Build the FAISS index of feats.npy (cosine similarity) and save it beside it as feats.faiss, with its
    manifest feats.faiss.json (the features it indexes, checksums, how it was built); or change an index."""
    from simclr.embed.features import path_key
    from simclr.search.indexing import add_index_files, build_index_files, default_index_file, remove_index_paths
    from simclr.search.plan import format_size, parse_size

    setup_logging()
    with user_errors():
        if not features:
            raise ValueError("give the features files to index (e.g. feats.npy)")
        if add or remove:
            target = features[0] if features[0].suffix == ".faiss" else Path(out or default_index_file(features))
            if add:
                manifest = add_index_files(target, add)
                summary = {"index": str(target), "added": [str(path) for path in add], "vectors": manifest.vectors}
                message = f"added {', '.join(map(str, add))}: {manifest.vectors} vectors -> {target}"
            if remove:
                remove = list({path_key(path): path for path in remove}.values())
                manifest, skipped = remove_index_paths(target, remove)
                summary = {"index": str(target), "removed": len(remove) - len(skipped), "already_removed": skipped,
                           "vectors": manifest.vectors}
                message = f"removed {len(remove) - len(skipped)} images ({len(skipped)} were already out): " \
                          f"{manifest.vectors} vectors -> {target}"
            if json_output:
                print_json(summary)
            else:
                typer.echo(message)
            return
        budget = parse_size(memory_budget) if memory_budget else None
        path, report = build_index_files(features, out, forget_removed, kind=kind, nlist=nlist, pq_bytes=pq_bytes,
                                         target_recall=target_recall, memory_budget=budget,
                                         max_query_ms=max_query_ms, progress=sys.stderr.isatty())
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if json_output:
        print_json({"index": str(path), **dataclasses.asdict(report), "index_bytes": path.stat().st_size})
        return
    tuned = "" if report.kind == "flat" else \
        f", recall@10 {report.recall_at_10:.3f} vs exact at " + \
        (f"efSearch {report.ef_search}" if report.kind == "hnsw" else f"nprobe {report.nprobe} of {report.nlist}")
    typer.echo(f"{report.description} index of {report.vectors:,} x {report.dim} in {report.build_seconds:.1f} s"
               f"{tuned}, {report.query_ms:.2f} ms a query, {format_size(path.stat().st_size)}, peak memory "
               f"{format_size(report.peak_rss_bytes)} -> {path}")


@with_encoder_options
def search_command(
    queries: Annotated[list[Path], typer.Argument(help="Query images, or folders of them.")],
    index: Annotated[Path, Option("--index", help="Features of the collection (feats.npy; its index feats.faiss "
                                                  "is built (exact) and saved when missing, or built in memory "
                                                  "when stale), or an index (.faiss) whose manifest names its "
                                                  "features files.")
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
        typer.echo(f"query {shown(result.query)}" + (f": unreadable ({shown(result.error)})" if result.error else ""))
        for neighbour in result.neighbours:
            typer.echo(f"  {neighbour.rank:>3}  {neighbour.score:.4f}  {shown(neighbour.path)}")
    if grid:
        typer.echo(f"grid -> {grid}", err=True)
