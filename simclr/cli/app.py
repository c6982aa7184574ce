"""The `simclr` command line: thin commands over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simclr.cli.classify import classify_command
from simclr.cli.embed import embed_command
from simclr.cli.export import export_command
from simclr.cli.finetune import finetune_command
from simclr.cli.merge import merge_command
from simclr.cli.probe import probe_command
from simclr.cli.quantize import quantize_command
from simclr.cli.search import index_command, search_command
from simclr.cli.search_server import search_server_command
from simclr.cli.serve import serve_command
from simclr.cli.slim import slim_command
from simclr.cli.train import train_command


def _typer(**settings) -> typer.Typer:
    # Plain help text: rich markup would swallow every "[default: ...]" of the option help as a style tag.
    return typer.Typer(add_completion=False, pretty_exceptions_show_locals=False, rich_markup_mode=None, **settings)


app = _typer(help="SimCLR as a tool: train an image encoder without labels, export, serve, embed, search.",
             no_args_is_help=True)
# One example per command: the last line of its --help, and checked against its options by tests/test_docs.py.
EXAMPLES = {
    "train": "simclr train --data photos/ --preset photo --epochs 100 --out runs/mydogs",
    "export": "simclr export runs/mydogs --weights fp16",
    "quantize": "simclr quantize model_repository/mydogs --calibration photos/",
    "serve": "simclr serve --repo model_repository",
    "embed": "simclr-embed photos/ --out feats.npy",
    "merge": "simclr merge feats-*-of-4.npy --out feats.npy",
    "index": "simclr index feats.npy --memory-budget 2G",
    "search": "simclr-search query.jpg -k 5 --grid neighbours.png",
    "search-server": "simclr search-server --index feats.npy",
    "probe": "simclr probe --train photos/train --test photos/test --json",
    "finetune": "simclr finetune model_repository/simclr_resnet18_photo --data photos --labels-per-class 20 "
                "--out runs/ft",
    "classify": "simclr classify photos/test --model model_repository/ft -k 3",
    "slim": "simclr slim runs/mydogs --out carry/last.pt --part-size 15MiB",
    "demo": "simclr demo --out demo_output",
}
COMMANDS = {"train": train_command, "export": export_command, "quantize": quantize_command, "serve": serve_command,
            "embed": embed_command, "merge": merge_command, "index": index_command, "search": search_command,
            "search-server": search_server_command, "probe": probe_command, "finetune": finetune_command,
            "classify": classify_command, "slim": slim_command}


def example(name: str) -> str:
    """The epilog of a command's --help: its example (Click keeps a paragraph after \\b as it is)."""
    return f"\b\nExample: {EXAMPLES[name]}"


for _name, _command in COMMANDS.items():
    app.command(_name, epilog=example(_name))(_command)

@app.command("demo", epilog=example("demo"))
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo writes.")] = Path("demo_output"),
    model: Annotated[Path | None, typer.Option(help="Model to demo. [default: $SIMCLR_MODEL, else the default "
                                                    "model of the source tree]")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder holding cifar-10-batches-py: also run the linear "
                                                        "probe. [default: skip it]")] = None,
    probe_train: Annotated[int, typer.Option(min=2, help="CIFAR-10 train images for the demo's probe, and half as "
                                                         "many test images (seeded subsets).")] = 5_000,
    keep_serving: Annotated[bool, typer.Option(help="Keep the search service it starts at the end running until "
                                                    "Ctrl-C (open its URL in a browser).")] = False,
) -> None:
    """Run the whole tool end to end: embed photos, index, search with augmented views, serve on Triton, probe,
    quantize, and the search service with its web page."""
    from simclr.cli.common import setup_logging, user_errors
    from simclr.demo import run_demo
    from simclr.embed.encoder import EncoderError
    from simclr.server.launcher import ServerError

    setup_logging()
    with user_errors(EncoderError, ServerError):
        run_demo(out, model, data_root, probe_train, say=typer.echo, keep_serving=keep_serving)


def main() -> None:
    app()


def embed_main() -> None:
    """The `simclr-embed` script: `simclr embed` on its own."""
    _single(embed_command, "embed")


def search_main() -> None:
    """The `simclr-search` script: `simclr search` on its own."""
    _single(search_command, "search")


def _single(command, name: str) -> None:
    single = _typer()
    single.command(epilog=example(name))(command)
    single()
