"""Docs that cannot drift: every command line of the Markdown docs is checked against the commands themselves
(subcommand, options), scripts, make targets and links must exist, every Python block of docs/ runs, and
docs/cli.md is what the app generates now."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simclr.cli.app import EXAMPLES
from simclr.cli.reference import commands, reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", ROOT / "bench" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
PROGRAMS = {"simclr": None, "simclr-embed": "embed", "simclr-search": "search"}
SEPARATORS = {"&&", "||", "|", ";", "&", ">", ">>", "<", "(", ")"}
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"<!-- (docs-test: triton|not run: .+) -->")


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # of the opening fence
    language: str
    text: str
    marker: str | None  # the HTML comment right above it, if any


def blocks(file: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file."""
    found, lines = [], file.read_text(encoding="utf-8").split("\n")
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = next(end for end in range(index + 1, len(lines)) if lines[end].startswith("```"))
        above = next((line for line in reversed(lines[:index]) if line.strip()), "")
        marker = MARKER.fullmatch(above.strip())
        found.append(Block(file, index + 1, opening.group(1), "\n".join(lines[index + 1:end]),
                           marker.group(1) if marker else None))
        index = end + 1
    return found


def command_lines(text: str) -> list[list[str]]:
    """Each command of a shell block as tokens: continuations joined, comments dropped, split at && | ; > ..."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.split("\n"):
        lexer = shlex.shlex(line.removeprefix("$ "), posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens, current = list(lexer), []
        for token in [*tokens, ";"]:
            if token in SEPARATORS:
                if current:
                    found.append(current)
                current = []
            else:
                current.append(token)
    return found


def simclr_invocation(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(subcommand, its arguments) when the tokens run simclr, simclr-embed or simclr-search (also as
    `torchrun ... -m simclr` or `python -m simclr`)."""
    start = next((position for position, token in enumerate(tokens) if not re.fullmatch(r"\w+=.*", token)), 0)
    for position, token in enumerate(tokens):
        if (token in PROGRAMS and position == start) or (token == "simclr" and tokens[position - 1:position] == ["-m"]):
            subcommand = PROGRAMS.get(token)
            rest = tokens[position + 1:]
            if subcommand is None:
                if not rest or rest[0].startswith("-"):
                    return ("", rest)
                subcommand, rest = rest[0], rest[1:]
            return subcommand, rest
    return None


def option_names(command) -> set[str]:
    context = command.context_class(command, info_name="simclr")
    names = {"--help"}
    for param in command.get_params(context):
        if param.param_type_name == "option":
            names.update(param.opts, param.secondary_opts)
    return names


def check_invocation(subcommand: str, arguments: list[str], where: str, known: dict) -> int:
    """Fail unless the subcommand exists and takes every option used; returns the number of options checked."""
    if subcommand == "":
        assert all(argument in ("--help",) for argument in arguments), f"{where}: simclr {arguments}"
        return len(arguments)
    assert subcommand in known, f"{where}: `simclr {subcommand}` is not a command (commands: {', '.join(known)})"
    accepted = option_names(known[subcommand])
    used = [argument.split("=")[0] for argument in arguments if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", argument)]
    unknown = [option for option in used if option not in accepted]
    assert not unknown, f"{where}: `simclr {subcommand}` has no option {', '.join(unknown)}"
    return len(used)


def all_invocations() -> list[tuple[str, str, list[str]]]:
    found = []
    for file in DOCS:
        for block in blocks(file):
            if block.language in SHELL:
                for tokens in command_lines(block.text):
                    invocation = simclr_invocation(tokens)
                    if invocation:
                        found.append((f"{file.relative_to(ROOT)}:{block.line}", *invocation))
    return found


def test_every_documented_command_and_option_exists():
    known = commands()
    invocations = all_invocations()
    options = sum(check_invocation(subcommand, arguments, where, known)
                  for where, subcommand, arguments in invocations)
    documented = {subcommand for _, subcommand, _ in invocations}
    assert set(known) <= documented | {""}, f"commands without a documented example: {set(known) - documented}"
    assert len(invocations) > 50 and options > 150, (len(invocations), options)


def test_every_help_ends_with_an_example_that_holds():
    known = commands()
    assert set(EXAMPLES) == set(known)
    for name, command in known.items():
        assert command.epilog.endswith(f"Example: {EXAMPLES[name]}")
        (tokens,) = command_lines(EXAMPLES[name])
        subcommand, arguments = simclr_invocation(tokens)
        assert subcommand == name
        check_invocation(subcommand, arguments, f"--help of {name}", known)


def test_scripts_and_make_targets_named_in_the_docs_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    for file in DOCS:
        for block in blocks(file):
            if block.language not in SHELL:
                continue
            for tokens in command_lines(block.text):
                for position, token in enumerate(tokens):
                    if re.fullmatch(r"(bench|examples|\.ci)/[\w./-]+\.(py|sh)|\.ci/run", token):
                        assert (ROOT / token).is_file(), f"{file.name}:{block.line}: {token} does not exist"
                    if token == "make" and position + 1 < len(tokens):
                        target = tokens[position + 1]
                        assert target in targets, f"{file.name}:{block.line}: no make target {target}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(file: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", file.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    return {slug(heading) for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def test_every_relative_link_points_at_a_file_and_heading_that_exist():
    checked, broken = 0, []
    for file in DOCS:
        text = re.sub(r"^```.*?^```", "", file.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (file.parent / path).resolve() if path else file
            if not linked.exists():
                broken.append(f"{file.relative_to(ROOT)}: link to {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{file.relative_to(ROOT)}: link to {target}: no such heading")
            checked += 1
    assert not broken, "\n".join(broken)
    assert checked > 30


def test_the_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == reference(), \
        "docs/cli.md is out of date: run `make docs`"


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").split("\n")) <= 250


# Every Python block of docs/ (and README's) runs, in order, in a folder of small generated photos.
PYTHON_DOCS = [ROOT / "README.md", ROOT / "docs" / "python-api.md"]
PYTHON_BLOCKS = [block for file in PYTHON_DOCS for block in blocks(file) if block.language == "python"]
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


@pytest.fixture(scope="module")
def docs_folder(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photos/train/<colour>/ (8 each), photos/test/<colour>/ (3 each), query.jpg, a text file, and
    model_repository/simclr_resnet18_photo: the session's tiny model standing in for the default (the blocks test
    the calls, not the model; a full-size ResNet-18 would take minutes of CPU here)."""
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(tiny_repo / "tiny", root / "model_repository" / "simclr_resnet18_photo")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 3)):
        for name, colour in COLOURS.items():
            (root / "photos" / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (72, 96, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "photos" / split / name / f"{index:02d}.jpg")
    Image.open(root / "photos" / "test" / "red" / "00.jpg").save(root / "query.jpg")
    (root / "not-an-image.txt").write_text("a text file named in a list of images\n")
    return root


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"{block.file.name}:{block.line}" for block in PYTHON_BLOCKS])
@pytest.mark.slow
def test_python_block_runs(block: Block, docs_folder: Path, request: pytest.FixtureRequest):
    code = block.text
    if block.marker and block.marker.startswith("not run:"):
        pytest.skip(f"{block.file.name}:{block.line}: {block.marker}")
    if block.marker == "docs-test: triton":  # the session's Triton, serving the tiny model as the docs' name
        server = request.getfixturevalue("triton")
        code = code.replace("127.0.0.1:8001", server.grpc_url).replace('"simclr_resnet18_photo"', '"tiny"')
    environment = {**os.environ, "SIMCLR_MODEL": str(docs_folder / "model_repository" / "simclr_resnet18_photo")}
    result = subprocess.run([sys.executable, "-c", code], cwd=docs_folder, env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{block.file.name}:{block.line} failed:\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"{block.file.name}:{block.line} printed nothing"
