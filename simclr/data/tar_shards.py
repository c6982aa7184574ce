"""Training images read straight from tar shards (.tar, .tar.gz, .tar.xz, e.g. Tiny ImageNet's), never unpacked to
disk: each shard is streamed once, its image members decoded from their bytes, one shard per worker process.

A compressed shard has no random access (xz is solid), so shards are always decoded into memory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import lzma
import os
import signal
import tarfile
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from simclr.data.decode import DECODE_ERRORS, decode_image
from simclr.data.images import IMAGE_EXTENSIONS, NoImagesError, walk_images
from simclr.lifetime import die_with_parent
from simclr.progress import progress_bar

log = logging.getLogger("simclr")

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tar.xz")
# What a broken archive raises while it is streamed: a bad header, a truncated or corrupt xz / gzip stream.
TAR_ERRORS = (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error)


@dataclass(frozen=True)
class DecodedShard:
    """One shard's readable images, uint8 [n, size, size, 3] in member order, and (member, reason) per failure."""

    images: np.ndarray
    failures: list[tuple[str, str]]


def is_shard(path: Path) -> bool:
    """Whether the file name ends like a shard: .tar, .tar.gz or .tar.xz (any case)."""
    return path.name.lower().endswith(SHARD_SUFFIXES)


def shard_files(data: str) -> list[Path] | None:
    """The shard files that `--data` names, sorted by file name: one shard file, a folder of shards (shard files
    and no image files), or a comma-separated list of shard files and folders of shards. None when `data` names
    one folder of image files, or one path that does not exist and is not named like a shard (the caller
    reports it). ValueError / FileNotFoundError naming the entry that is none of these."""
    single = Path(data)
    if single.is_dir():
        return folder_shards(single)
    if "," in data and not single.exists():
        sources = [Path(part.strip()) for part in data.split(",") if part.strip()]
        if not sources:
            raise ValueError(f"--data {data!r}: names no shard file or folder")
    elif single.exists() or is_shard(single):
        sources = [single]
    else:
        return None
    return _sorted_by_name([shard for source in sources for shard in _source_shards(source, data)], data)


def folder_shards(folder: Path) -> list[Path] | None:
    """The shard files directly in `folder`, sorted; None unless it holds some and no image files (below it)."""
    shards = sorted(path for path in folder.iterdir() if path.is_file() and is_shard(path))
    return shards if shards and not _holds_images(folder) else None


def shard_image_names(path: Path) -> list[str]:
    """The names of the image members of the shard at `path`, in archive order (one streaming pass)."""
    return [name for name, _ in _image_members(path)]


def decode_shard(path: Path, size: int) -> DecodedShard:
    """Decode the image members of one shard as `decode_image` decodes a file: uint8 [n, size, size, 3]."""
    images, failures = [], []
    for name, data in _image_members(path):
        try:
            images.append(decode_image(io.BytesIO(data), size))
        except DECODE_ERRORS as error:
            failures.append((name, f"{type(error).__name__}: {str(error).strip() or 'unreadable'}"))
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return DecodedShard(stacked, failures)


def decode_shards(shards: Sequence[Path], size: int, workers: int | None, max_bytes: int) -> torch.Tensor:
    """Every image member of `shards` decoded to uint8 [N, 3, size, size], in shard order then member order.

    One shard per process, `workers` processes at a time (None: one per CPU; 0: in this process), with a progress
    bar over shards. Unreadable members are left out with one warning each naming `shard:member`. ValueError
    naming the file for a shard that is not a readable tar, and, as soon as the shards decoded so far say so,
    when all of them would take more than `max_bytes`.
    """
    parts: list[np.ndarray] = []
    decoded_bytes = 0
    workers = min((os.cpu_count() or 1) if workers is None else workers, len(shards))
    with (_processes(workers) as pool,
          progress_bar(total=len(shards), unit="shard", desc=f"decoding {_describe(shards)}") as bar):
        for path, shard in zip(shards, _in_order(pool, workers, shards, size), strict=True):
            for member, reason in shard.failures:
                log.warning("skipping unreadable image %s:%s: %s", path, member, reason)
            parts.append(shard.images)
            decoded_bytes += shard.images.nbytes
            _check_fits(decoded_bytes * len(shards) // len(parts), max_bytes, shards, size)
            bar.update(1)
            bar.set_postfix(images=sum(len(part) for part in parts))
    return _assembled(parts, size)


def _image_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each image member (a regular file named like an image) of the shard at `path`, in archive
    order, streamed once; directories and other files are passed over. ValueError naming the file when it is not
    a readable tar."""
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_EXTENSIONS:
                    yield member.name, archive.extractfile(member).read()
    except TAR_ERRORS as error:
        kinds = ", ".join(SHARD_SUFFIXES)
        raise ValueError(f"{path}: not a readable tar shard ({kinds}): {type(error).__name__}: {error}") from None


def _in_order(pool: ProcessPoolExecutor | None, workers: int, shards: Sequence[Path],
              size: int) -> Iterator[DecodedShard]:
    """`decode_shard` of each shard, in order: in `pool` of `workers` processes (one shard each at a time, so that
    finished shards do not pile up ahead of the consumer), or in this process when `pool` is None."""
    if pool is None:
        yield from (decode_shard(path, size) for path in shards)
        return
    waiting = iter(shards)
    pending: deque[Future] = deque(pool.submit(decode_shard, path, size)
                                   for path in islice(waiting, workers))
    while pending:
        result = pending.popleft().result()
        pending.extend(pool.submit(decode_shard, path, size) for path in islice(waiting, 1))
        yield result


@contextlib.contextmanager
def _processes(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of `workers` processes that die with this one, or None for workers=0."""
    if workers == 0:
        yield None
        return
    with ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(signal.SIGKILL,)) as pool:
        yield pool


def _check_fits(estimated_bytes: int, max_bytes: int, shards: Sequence[Path], size: int) -> None:
    """ValueError (one line, saying to unpack) when the decoded shards would take more than `max_bytes`."""
    if estimated_bytes > max_bytes:
        raise ValueError(f"{_describe(shards)}: decoded at {size}x{size} px they take about "
                         f"{estimated_bytes / 1e9:.1f} GB, more than the {max_bytes / 1e9:.1f} GB that fit in memory "
                         "now; unpack them (tar -xf SHARD -C FOLDER) and pass the folder, which is decoded on demand")


def _assembled(parts: list[np.ndarray], size: int) -> torch.Tensor:
    """Stack per-shard uint8 [n, size, size, 3] arrays into one uint8 [N, 3, size, size] tensor."""
    images = torch.empty((sum(len(part) for part in parts), 3, size, size), dtype=torch.uint8)
    row = 0
    for part in parts:
        images[row:row + len(part)] = torch.from_numpy(part).permute(0, 3, 1, 2)
        row += len(part)
    return images


def _source_shards(source: Path, data: str) -> list[Path]:
    """The shards of one entry of `--data`: a shard file, or a folder of shards."""
    if source.is_dir():
        shards = folder_shards(source)
        if shards is None:
            raise ValueError(f"--data {data}: {source} is not a folder of shards (it holds image files, or no "
                             f"{', '.join(SHARD_SUFFIXES)} files)")
        return shards
    if not source.exists():
        raise FileNotFoundError(f"--data {data}: {source}: no such shard file or folder")
    if not is_shard(source):
        raise ValueError(f"--data {data}: {source} is neither a shard ({', '.join(SHARD_SUFFIXES)}) nor a folder")
    return [source]


def _sorted_by_name(shards: list[Path], data: str) -> list[Path]:
    """`shards` sorted by file name, which must be unique: images are named `<shard file name>/<member>`."""
    by_name: dict[str, Path] = {}
    for shard in shards:
        if shard.name in by_name:
            raise ValueError(f"--data {data}: two shards named {shard.name} ({by_name[shard.name]} and {shard}); "
                             "shard file names must be unique")
        by_name[shard.name] = shard
    return [by_name[name] for name in sorted(by_name)]


def _holds_images(folder: Path) -> bool:
    """Whether any image file lies below `folder` (the walk stops at the first)."""
    try:
        return any(reason is None for _, reason in walk_images(folder))
    except NoImagesError:
        return False


def _describe(shards: Sequence[Path]) -> str:
    """'a.tar.xz', or '8 shards (a.tar.xz … h.tar.xz)', for messages."""
    if len(shards) == 1:
        return str(shards[0])
    return f"{len(shards)} shards ({shards[0].name} … {shards[-1].name})"
