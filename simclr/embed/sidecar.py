"""The feats.jsonl sidecar's first line: which model embedded which inputs, and how (one typed header)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simclr.embed.encoder import ModelIdentity

SIDECAR_FORMAT = "simclr-embeddings"
SIDECAR_VERSION = 1


class ListingDigest:
    """The count and sha256 of a list of paths, fed one path at a time (a list of any length, in constant memory)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self.count = 0

    def add(self, path: str) -> None:
        self._digest.update(path.encode("utf-8", "surrogateescape") + b"\n")
        self.count += 1

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def listing_sha256(paths: Iterable[str]) -> str:
    """The sha256 of a list of paths, in order."""
    digest = ListingDigest()
    for path in paths:
        digest.add(path)
    return digest.sha256


def file_record(path: str) -> dict | None:
    """What a row records of its file, so that the search service serves only the file that was embedded: its
    size and modification time (not its inode, which a copy of the collection to another disk changes). None when
    the file cannot be read any more."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns}


def sidecar_path(features_path: Path) -> Path:
    """feats.npy -> feats.jsonl"""
    return Path(features_path).with_suffix(".jsonl")


def read_header(features_path: Path) -> FeaturesHeader:
    """The header of the sidecar beside `features_path`; FileNotFoundError/ValueError name the file."""
    sidecar = sidecar_path(features_path)
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar}: the sidecar of {features_path} is missing")
    with open(sidecar) as file:
        return FeaturesHeader.from_json(json.loads(file.readline() or "null"), sidecar)


@dataclass(frozen=True)
class Shard:
    """Job `index` of `count`: image i of the whole list belongs to job i mod count. `images` and `listing_sha256`
    are the whole list's, so that `simclr merge` can check the parts belong together."""

    index: int
    count: int
    images: int
    listing_sha256: str


@dataclass(frozen=True)
class FeaturesHeader:
    """The sidecar's header record: the model's identity and where it ran, the inputs as given, the working
    directory they are relative to, whether rows are L2-normalised, and how many images the inputs hold."""

    model: ModelIdentity
    model_source: str  # an ONNX file path, or protocol://host:port of a Triton server
    inputs: tuple[str, ...]
    cwd: str
    normalized: bool
    images: int
    listing_sha256: str = ""  # of the image paths in input order: --resume needs the very same list
    shard: Shard | None = None  # a job of `simclr-embed --shard K/N`: which part, and the whole list it is part of

    def to_json(self) -> dict[str, Any]:
        model = {"name": self.model.name, "version": self.model.version, "sha256": self.model.sha256,
                 "image_size": self.model.image_size, "embedding_dim": self.model.embedding_dim,
                 "source": self.model_source}
        record = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "model": model, "inputs": list(self.inputs),
                  "cwd": self.cwd, "normalized": self.normalized, "images": self.images,
                  "listing_sha256": self.listing_sha256}
        if self.shard is not None:
            record["shard"] = dataclasses.asdict(self.shard)
        return record

    @classmethod
    def from_json(cls, record: Any, source: Path) -> FeaturesHeader:
        """Parse a header record; ValueError names `source` when it is not one."""
        if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"{source}: not a simclr-embed sidecar (its first line is no {SIDECAR_FORMAT} header)")
        try:
            model = record["model"]
            identity = ModelIdentity(str(model["name"]), str(model["version"]), str(model["sha256"]),
                                     int(model["image_size"]), int(model["embedding_dim"]))
            shard = Shard(**record["shard"]) if "shard" in record else None
            return cls(identity, str(model.get("source", "")), tuple(str(p) for p in record["inputs"]),
                       str(record["cwd"]), bool(record["normalized"]), int(record["images"]),
                       str(record.get("listing_sha256", "")), shard)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: damaged sidecar header ({type(error).__name__}: {error})") from None

    def same_run(self, other: FeaturesHeader) -> bool:
        """Whether `other` embeds the same inputs with the same model and settings (what --resume requires)."""
        return dataclasses.replace(self, model_source="") == dataclasses.replace(other, model_source="")
