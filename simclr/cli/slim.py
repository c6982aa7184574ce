"""`simclr slim`: a run's checkpoint without optimiser state and with float16 weights, in parts small enough to
carry to and from a GPU machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simclr.cli.common import fail, print_json, setup_logging, user_errors

Option = typer.Option


def slim_command(
    source: Annotated[Path, typer.Argument(metavar="SOURCE",
                                           help="A run directory (its last.pt), a checkpoint file, or a checkpoint "
                                                "split into parts (NAME, for NAME.part-1-of-K ..., or one part).")],
    out: Annotated[Path, Option(dir_okay=False, help="The slim checkpoint to write (e.g. carry/last.pt, so that "
                                                     "`simclr train --out carry --resume` continues from it).")],
    part_size: Annotated[str, Option(help="Largest file to write: a larger slim checkpoint becomes OUT.part-1-of-K "
                                          "... OUT.part-K-of-K (a size such as 15MiB, 15M or 15000000; K, M and G "
                                          "are powers of 1024; 0: never split).")] = "15MiB",
    json_output: Annotated[bool, Option("--json", help="Print the files written (path, bytes) and the sha256 of "
                                                       "the whole checkpoint as JSON on stdout.")] = False,
) -> None:
    """Write SOURCE's checkpoint without optimiser and gradient-scaler state, its conv and linear weights in
    float16 (norm parameters and running statistics stay float32), split into parts when larger than --part-size.
    A run resumes from it, whole or in parts, with fresh momentum (`simclr train --out DIR --resume`), and simclr
    export reads it as it reads a full checkpoint. Prints one line per file written.
    """
    from simclr.search.plan import format_size, parse_size
    from simclr.train.checkpoint import checkpoint_sha256, save_slim_checkpoint

    setup_logging()
    try:
        part_bytes = parse_size(part_size)
    except ValueError:
        raise fail(f"--part-size {part_size}: give a size such as 15MiB, 15M or 15000000 (bytes), or 0 for one "
                   "file") from None
    with user_errors():
        written = save_slim_checkpoint(source, out, part_bytes)
    files = [{"path": str(path), "bytes": path.stat().st_size} for path in written]
    if json_output:
        print_json({"source": str(source), "files": files, "bytes": sum(file["bytes"] for file in files),
                    "sha256": checkpoint_sha256(written[0])})
        return
    for file in files:
        typer.echo(f"wrote {file['path']}: {file['bytes']:,} bytes ({format_size(file['bytes'])})")
