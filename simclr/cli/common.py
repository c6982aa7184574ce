"""What every command shares: logging to stderr, one-line errors, JSON on stdout."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator

import typer

from simclr.errors import first_line

# Errors a user can fix: the CLI prints their one-line message and exits 1. OSError covers missing files, folders
# given for files, permissions and a full disk.
USER_ERRORS = (ValueError, OSError)


def setup_logging(verbose: bool = False) -> None:
    """The simclr logger's lines on this command's stderr (progress bars write them through tqdm while they run)."""
    logger = logging.getLogger("simclr")
    for old in logger.handlers[:]:  # an earlier command in this process may have had another stderr
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("simclr: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and exit status 1."""
    try:
        yield
    except (*USER_ERRORS, *extra) as error:
        raise fail(first_line(error)) from None


def shown(path: str) -> str:
    """A path as a terminal can print it: bytes that are not UTF-8 (held as surrogates) as escapes, e.g.
    caf\\udce9.png (os.fsencode of the escape's code point gives the byte back); JSON output escapes them alike."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def print_json(payload: dict) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))
