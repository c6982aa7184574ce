"""Training images read straight from tar shards: the same pixels as the files unpacked, in shard then member
order, with unreadable members and broken archives named."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclr.data.datasets import InMemoryImages, training_image_names, training_images
from simclr.data.shared import shared_data
from simclr.data.tar_shards import decode_shards, shard_files

SIZE = 16
BROKEN = "train/n002/n002_9.JPEG"


def _photo(seed: int, width: int, height: int, format: str) -> bytes:
    """A small random image file's bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def _write_shard(path: Path, members: dict[str, bytes], mode: str = "w:xz") -> None:
    """A shard holding `members` in the given order, plus a folder member and a text member."""
    with tarfile.open(path, mode) as archive:
        folder = tarfile.TarInfo("train")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, data in {**members, "train/notes.txt": b"not an image"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _members(shard: int) -> dict[str, bytes]:
    """Sorted Tiny-ImageNet-style members: JPEGs and PNGs of three sizes, and in shard 0 one broken JPEG."""
    members = {}
    for index in range(6):
        wnid = f"n00{index % 2 + 1}"
        width, height = [(20, 14), (12, 30), (16, 16)][index % 3]
        format = "PNG" if index % 2 else "JPEG"
        members[f"train/{wnid}/{wnid}_{shard}{index}.{format}"] = _photo(10 * shard + index, width, height, format)
    if shard == 0:
        members[BROKEN] = b"not a jpeg"
    return dict(sorted(members.items()))


@pytest.fixture()
def shard_folder(tmp_path: Path) -> Path:
    """shards/part-0.tar.xz and part-1.tar.xz, and unpacked/<shard name>/<member> holding the same files."""
    for shard in (0, 1):
        name = f"part-{shard}.tar.xz"
        (tmp_path / "shards").mkdir(exist_ok=True)
        _write_shard(tmp_path / "shards" / name, _members(shard))
        for member, data in _members(shard).items():
            file = tmp_path / "unpacked" / name / member
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(data)
    return tmp_path / "shards"


def _images(data: str, workers: int = 0) -> torch.Tensor:
    dataset = training_images(data, None, SIZE, workers=workers, in_memory=True)
    assert isinstance(dataset, InMemoryImages) and dataset.images.dtype == torch.uint8
    return dataset.images


def test_a_folder_of_shards_decodes_like_its_files_unpacked(shard_folder: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="simclr"):
        from_shards = _images(str(shard_folder))
    assert f"part-0.tar.xz:{BROKEN}" in caplog.text
    assert sum("skipping unreadable image" in record.message for record in caplog.records) == 1
    from_files = _images(str(shard_folder.parent / "unpacked"))
    assert from_shards.shape == (12, 3, SIZE, SIZE) and torch.equal(from_shards, from_files)
    assert from_shards.is_contiguous()


def test_workers_decode_the_same_images_in_the_same_order(shard_folder: Path) -> None:
    assert torch.equal(_images(str(shard_folder), workers=0), _images(str(shard_folder), workers=2))


def test_one_shard_and_a_comma_list_of_shards_and_folders(shard_folder: Path, tmp_path: Path) -> None:
    everything = _images(str(shard_folder))
    assert torch.equal(_images(str(shard_folder / "part-0.tar.xz")), everything[:6])
    # Sorted by file name whatever the order given: extra.tar.gz, then part-0, part-1 (from the folder).
    _write_shard(tmp_path / "extra.tar.gz", {"x/a.png": _photo(99, 9, 9, "PNG")}, mode="w:gz")
    listed = _images(f"{shard_folder}, {tmp_path / 'extra.tar.gz'}")
    assert torch.equal(listed[1:], everything) and len(listed) == 13
    assert shard_files(f"{shard_folder},{tmp_path / 'extra.tar.gz'}")[0].name == "extra.tar.gz"


def test_members_come_in_archive_order(tmp_path: Path) -> None:
    colours = {"z.png": 200, "a.png": 10, "m.png": 90}
    members = {}
    for name, value in colours.items():
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (value, value, value)).save(buffer, format="PNG")
        members[name] = buffer.getvalue()
    _write_shard(tmp_path / "unsorted.tar", members, mode="w")
    images = _images(str(tmp_path / "unsorted.tar"))
    assert [int(image[0, 0, 0]) for image in images] == list(colours.values())
    assert training_image_names(str(tmp_path / "unsorted.tar")) == [f"unsorted.tar/{name}" for name in colours]


def test_training_image_names_of_a_folder_and_of_shards(shard_folder: Path) -> None:
    unpacked = shard_folder.parent / "unpacked"
    expected = [f"{name}/{member}" for name in ("part-0.tar.xz", "part-1.tar.xz") for member in _members(int(name[5]))]
    assert len(expected) == 13  # the broken member is an image member too; notes.txt and the folder are not
    assert training_image_names(str(unpacked)) == expected
    assert training_image_names(str(shard_folder)) == expected
    assert training_image_names(f"{shard_folder / 'part-1.tar.xz'},{shard_folder / 'part-0.tar.xz'}") == expected
    assert training_image_names("cifar10") == []


def test_a_file_that_is_not_a_tar_is_named_in_one_line(shard_folder: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar.xz"
    garbage.write_bytes(b"\xfd7zXZ\x00" + bytes(200))
    truncated = tmp_path / "truncated.tar.xz"
    truncated.write_bytes((shard_folder / "part-1.tar.xz").read_bytes()[:300])
    for broken in (garbage, truncated):
        for workers in (0, 2):
            with pytest.raises(ValueError, match="not a readable tar") as error:
                training_images(f"{shard_folder},{broken}", None, SIZE, workers=workers)
            assert str(broken) in str(error.value) and "\n" not in str(error.value)
        with pytest.raises(ValueError, match=str(broken)):
            training_image_names(str(broken))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is neither a shard"):
        training_images(f"{shard_folder},{tmp_path / 'notes.txt'}", None, SIZE)
    with pytest.raises(FileNotFoundError, match="missing.tar.xz"):
        training_images(str(tmp_path / "missing.tar.xz"), None, SIZE)
    with pytest.raises(ValueError, match="two shards named part-0.tar.xz"):
        training_images(f"{shard_folder},{shard_folder / 'part-0.tar.xz'}", None, SIZE)


def test_a_folder_with_image_files_is_read_as_an_image_folder(shard_folder: Path) -> None:
    Image.new("RGB", (8, 8), (1, 2, 3)).save(shard_folder / "loose.png")
    assert shard_files(str(shard_folder)) is None
    assert training_image_names(str(shard_folder)) == ["loose.png"]
    with pytest.raises(ValueError, match="not a folder of shards"):
        training_images(f"{shard_folder},{shard_folder / 'part-0.tar.xz'}", None, SIZE)


def test_shards_that_would_not_fit_in_memory_are_refused(shard_folder: Path) -> None:
    shards = shard_files(str(shard_folder))
    with pytest.raises(ValueError, match=r"about 0\.0 GB.*unpack them") as error:
        decode_shards(shards, SIZE, workers=0, max_bytes=1000)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="always decoded into memory"):
        training_images(str(shard_folder), None, SIZE, in_memory=False)


@pytest.mark.slow
def test_a_real_tiny_imagenet_shard_decodes_every_image() -> None:
    folder = shared_data() / "tinyimagenet"
    shard = folder / "tinyimagenet-train-7.tar.xz"
    if not shard.is_file():
        pytest.skip(f"{shard} not found (set $SIMCLR_SHARED_DATA to the folder holding tinyimagenet/)")
    recorded = {entry["file"]: entry["images"] for entry in json.loads((folder / "tinyimagenet.json").read_text())
                ["shards"]}[shard.name]
    images = training_images(str(shard), None, 64, workers=0).images
    assert images.shape == (recorded, 3, 64, 64)
    names = training_image_names(str(shard))
    assert len(names) == recorded and names[0].startswith(f"{shard.name}/train/n")
