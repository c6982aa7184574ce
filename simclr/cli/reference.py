"""docs/cli.md, the command-line reference, written from the Typer app itself (`make docs`; a test keeps it current)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from simclr.cli.app import EXAMPLES, app

SCRIPTS = {"embed": "simclr-embed", "search": "simclr-search"}  # subcommands that are also scripts of their own


def commands() -> dict:
    """Every `simclr` subcommand by name, in the order of `simclr --help`."""
    return dict(typer.main.get_command(app).commands)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _summary(command) -> str:
    """The first paragraph of a command's help, on one line."""
    return _cell((command.help or "").strip().split("\n\n")[0])


def _usage(argument) -> str:
    word = (argument.metavar or argument.name.upper()) + ("..." if argument.nargs == -1 else "")
    return word if argument.required else f"[{word}]"


def _command_section(name: str, command) -> Iterator[str]:
    context = command.context_class(command, info_name=f"simclr {name}")
    also = f" (or `{SCRIPTS[name]}`)" if name in SCRIPTS else ""
    yield f"## simclr {name}{also}"
    yield ""
    arguments = [param for param in command.get_params(context) if param.param_type_name == "argument"]
    options = [param for param in command.get_params(context) if param.param_type_name == "option"]
    yield f"`{' '.join(['simclr', name, '[OPTIONS]', *map(_usage, arguments)])}`"
    yield ""
    yield (command.help or "").strip()
    yield ""
    if arguments:
        yield "| argument | what |"
        yield "|---|---|"
        for argument in arguments:
            yield f"| `{_usage(argument)}` | {_cell(argument.help or '')} |"
        yield ""
    yield "| option | what |"
    yield "|---|---|"
    for option in options:
        names, text = option.get_help_record(context) or ("", "")
        yield f"| `{_cell(names)}` | {_cell(text)} |"
    yield ""
    yield f"Example: `{EXAMPLES[name]}`"
    yield ""


def reference() -> str:
    """The whole reference page, as Markdown."""
    lines = ["# Command-line reference", "",
             "Every command, argument and option, with its default and its choices: generated from the commands "
             "themselves by `make docs` (`python -m simclr.cli.reference docs/cli.md`); `tests/test_docs.py` fails "
             "when it is out of date.", ""]
    listed = commands()
    lines += [f"- [simclr {name}](#simclr-{name.replace(' ', '-')}"
              f"{'-or-' + SCRIPTS[name] if name in SCRIPTS else ''}): {_summary(command)}"
              for name, command in listed.items()]
    lines.append("")
    for name, command in listed.items():
        lines += _command_section(name, command)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    Path(sys.argv[1]).write_text(reference(), encoding="utf-8")


if __name__ == "__main__":
    main()
