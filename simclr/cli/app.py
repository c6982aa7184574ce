"""The `simclr` command line: thin commands over the library."""

from __future__ import annotations

import typer

from simclr.cli.embed import embed_command
from simclr.cli.export import export_command
from simclr.cli.probe import probe_command
from simclr.cli.search import index_command, search_command
from simclr.cli.serve import serve_command
from simclr.cli.train import train_command

app = typer.Typer(help="SimCLR as a tool: train an image encoder without labels, export, serve, embed, search.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
app.command("train")(train_command)
app.command("export")(export_command)
app.command("serve")(serve_command)
app.command("embed")(embed_command)
app.command("index")(index_command)
app.command("search")(search_command)
app.command("probe")(probe_command)


@app.command("demo")
def demo_command() -> None:
    """Run the whole tool end to end on the default model (arrives with part 5/5)."""
    typer.echo("simclr demo: not built yet (the default model and demo arrive with part 5/5). "
               "Today: simclr train --help")


def main() -> None:
    app()


def embed_main() -> None:
    """The `simclr-embed` script: `simclr embed` on its own."""
    typer.run(embed_command)


def search_main() -> None:
    """The `simclr-search` script: `simclr search` on its own."""
    typer.run(search_command)
