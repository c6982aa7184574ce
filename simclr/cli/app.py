"""The `simclr` command line: thin commands over the library."""

from __future__ import annotations

import typer

from simclr.cli.export import export_command
from simclr.cli.serve import serve_command
from simclr.cli.train import train_command

app = typer.Typer(help="SimCLR as a tool: train an image encoder without labels, export, serve, embed, search.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
app.command("train")(train_command)
app.command("export")(export_command)
app.command("serve")(serve_command)


@app.command("demo")
def demo_command() -> None:
    """Run the whole tool end to end on the default model (arrives with part 5/5)."""
    typer.echo("simclr demo: not built yet (the default model and demo arrive with part 5/5). "
               "Today: simclr train --help")


def _not_built(name: str, part: str) -> None:
    typer.echo(f"error: {name} is not built yet (part {part}); today the tool trains encoders: simclr train --help",
               err=True)
    raise SystemExit(1)


def main() -> None:
    app()


def embed_main() -> None:
    _not_built("simclr-embed", "3/5")


def search_main() -> None:
    _not_built("simclr-search", "3/5")
