"""The embedding reader: what it scans (and each image's class), and decoded batches in input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simclr.data.images import load_image
from simclr.embed.reader import decoded_batches, scan_inputs


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for index, folder in enumerate(["cats", "cats", "dogs/old", ""]):
        (tmp_path / "root" / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 12), (60 * index, 0, 0)).save(tmp_path / "root" / folder / f"{index}.png")
    (tmp_path / "root" / "dogs" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (9, 9)).save(tmp_path / "single.png")
    return tmp_path


def test_scan_lists_files_in_sorted_order_with_the_first_folder_as_class(tree: Path) -> None:
    entries = scan_inputs([tree / "root", tree / "single.png"])
    assert [(Path(e.path).relative_to(tree).as_posix(), e.label) for e in entries] == [
        ("root/3.png", None), ("root/cats/0.png", "cats"), ("root/cats/1.png", "cats"),
        ("root/dogs/broken.jpg", "dogs"), ("root/dogs/old/2.png", "dogs"), ("single.png", None)]


def test_a_missing_input_is_named(tree: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder"):
        scan_inputs([tree / "nowhere"])


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_keep_input_order_and_say_why_a_file_failed(tree: Path, workers: int) -> None:
    entries = scan_inputs([tree / "root"])
    batches = list(decoded_batches(entries, 8, batch_size=2, workers=workers))
    assert [e for batch in batches for e in batch.entries] == entries
    errors = [error for batch in batches for error in batch.errors]
    assert [error is None for error in errors] == [True, True, True, False, True]
    assert errors[3].startswith("UnidentifiedImageError: ")
    decoded = np.concatenate([batch.images for batch in batches])
    expected = [load_image(Path(e.path), 8) for e, error in zip(entries, errors, strict=True) if error is None]
    np.testing.assert_array_equal(decoded, np.stack(expected))
