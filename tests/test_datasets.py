"""Training and labelled image sets: folders decoded once into memory or on demand, with the same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclr.data.datasets import ImageFiles, InMemoryImages, labelled_folder, training_images
from simclr.data.images import find_images, load_image


def test_folder_decoded_into_memory_equals_decoding_each_file(image_folder: Path) -> None:
    in_memory = training_images(str(image_folder), None, 16, workers=2, in_memory=True)
    on_demand = training_images(str(image_folder), None, 16, workers=2, in_memory=False)
    assert isinstance(in_memory, InMemoryImages) and isinstance(on_demand, ImageFiles)
    assert in_memory.images.shape == (24, 3, 16, 16) and in_memory.images.dtype == torch.uint8
    for index, path in enumerate(find_images(image_folder)):
        expected = torch.from_numpy(load_image(path, 16)).permute(2, 0, 1)
        assert torch.equal(in_memory.images[index], expected) and torch.equal(on_demand[index], expected)


def test_folder_is_decoded_into_memory_by_default_when_it_fits(image_folder: Path) -> None:
    assert isinstance(training_images(str(image_folder), None, 16, workers=0), InMemoryImages)


def test_unreadable_files_are_left_out_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for index in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * index, np.uint8)).save(tmp_path / f"{index}.png")
    (tmp_path / "1b.png").write_bytes(b"not a png")
    with caplog.at_level("WARNING", logger="simclr"):
        images = training_images(str(tmp_path), None, 8, workers=0, in_memory=True).images
    assert images.shape == (3, 3, 8, 8) and "1b.png" in caplog.text
    assert [int(image[0, 0, 0]) for image in images] == [0, 40, 80]


def test_labelled_folder_gives_each_image_its_class(tmp_path: Path) -> None:
    colours = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        for index in range(4):
            Image.new("RGB", (10 + index, 12), colour).save(tmp_path / name / f"{index}.png")
    labelled = labelled_folder(tmp_path, 8, workers=2)
    assert labelled.classes == ("blue", "green", "red") and labelled.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for image, label in zip(labelled.images, labelled.labels, strict=True):
        assert tuple(image[:, 4, 4].tolist()) == colours[labelled.classes[label]]
