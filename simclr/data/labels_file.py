"""labelled_images.txt: which images of a data set's train split are labelled (one a line: the image's index in
the data set, or its path inside the split's folder; a tab; its class). `simclr finetune` writes it; `simclr
finetune --labels-file` and `simclr probe --labels-file` read it."""

from __future__ import annotations

from pathlib import Path

LABELS_NAME = "labelled_images.txt"


def format_labels_file(entries: list[tuple[str, str]], description: str) -> str:
    """The file's text: a comment line, a header comment, then `key<TAB>class` per image."""
    lines = [f"# {description}", "# image (index in the data set, or path in the train split)\tclass"]
    return "\n".join([*lines, *(f"{key}\t{name}" for key, name in entries)]) + "\n"


def read_labels_file(path: Path) -> list[tuple[int, str, str]]:
    """(line number, key, class) of every image the file names; FileNotFoundError or ValueError name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--labels-file {path}: no such file")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        key, tab, name = line.partition("\t")
        if not tab or not key or not name:
            raise ValueError(f"{path}:{number}: expected an image and its class separated by a tab")
        entries.append((number, key, name))
    if not entries:
        raise ValueError(f"--labels-file {path}: names no images")
    return entries
