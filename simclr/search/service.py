"""The search service's state: the encoder (loaded once), the collection (rows read from the features files with
pread, the FAISS index in memory, swapped whole by `reload`), and the queries it answers. Nothing is memory-mapped:
a file rewritten in place under a running service gives an error, never SIGBUS. No web code here: `search/api.py`
serves it over HTTP."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr.data.decode import DECODE_ERRORS, MAX_QUERY_PIXELS, decode_image, to_rgb
from simclr.embed.encoder import Encoder, EncoderSpec
from simclr.embed.features import Features, path_key
from simclr.errors import first_line
from simclr.search.errors import QueryError
from simclr.search.files import OpenedFile, open_collection_file
from simclr.search.index import search
from simclr.search.query import check_model, open_index, query_encoder
from simclr.search.store import index_path, index_report
from simclr.search.vectors import Vectors, vector_source

__all__ = ["MAX_K", "Answer", "Collection", "QueryError", "SearchService"]

log = logging.getLogger("simclr")
MAX_K = 1000
THUMBNAIL_SIZES = range(16, 513)
THUMBNAILS_CACHED = 4096
# Decodes at a time (uploads and thumbnails): each may hold up to ~16 bytes a pixel while it runs.
DECODE_SLOTS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class Collection:
    """One load of the features and their index; a reload builds a new one and swaps it in whole."""

    features: Features
    index: object  # faiss.Index, in memory
    vectors: Vectors  # the rows, read from the features files with pread
    rows_by_path: dict[str, int]
    report: dict | None  # how the index was built (kind, recall), as recorded beside it
    loaded_at: float


@dataclass(frozen=True)
class Answer:
    """What a search returns: the shape of `simclr-search --json`, plus the query's row (None for an upload), its
    embedding and timings."""

    query: str
    row: int | None
    neighbours: list[dict]
    embedding: list[float]
    timing_ms: dict[str, float]

    def as_dict(self) -> dict:
        return {"results": [{"query": self.query, "row": self.row, "neighbours": self.neighbours}],
                "embedding": self.embedding, "timing_ms": self.timing_ms}


class SearchService:
    """Search a collection embedded by simclr-embed: by an uploaded photo, an indexed row or an indexed path."""

    def __init__(self, features_path: Path, spec: EncoderSpec | None = None,
                 max_query_pixels: int = MAX_QUERY_PIXELS) -> None:
        self.features_path = Path(features_path)
        # A query embeds one image between searches and HTTP work: spinning ONNX Runtime threads would slow those 2x.
        self.spec = dataclasses.replace(spec or EncoderSpec(), spin=False)
        self.max_query_pixels = max_query_pixels
        self.encoder: Encoder | None = None
        self.collection: Collection | None = None
        self._reload_lock = threading.Lock()
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        self._thumbnails: OrderedDict[tuple, bytes] = OrderedDict()
        self._thumbnails_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.collection is not None and self.encoder is not None

    def load(self) -> None:
        """Load the collection (building its index when missing, as `simclr index` would) and the encoder."""
        collection = self._load_collection()
        self.encoder = query_encoder(collection.features, self.spec)
        self.collection = collection

    def reload(self) -> Collection:
        """Swap in the collection as it is on disk now. Requests in flight finish on the one they started with;
        when the new one cannot be loaded (a file missing, damaged, a folder in its place), or was embedded with
        another model, the old one stays (ValueError, one line)."""
        with self._reload_lock:
            try:
                collection = self._load_collection()
            except OSError as error:
                raise ValueError(first_line(error)) from None
            check_model(collection.features, self.encoder)
            self.collection = collection
            log.info("reloaded %s: %d images", self.features_path, len(collection.features.paths))
            return collection

    def _load_collection(self) -> Collection:
        features, index = open_index(self.features_path, kind="auto", mmap=False)
        rows = {path_key(path): row for row, path in enumerate(features.paths) if row not in features.removed}
        index_file = self.features_path if self.features_path.suffix == ".faiss" else index_path(self.features_path)
        return Collection(features, index, vector_source(list(features.parts)), rows, index_report(index_file),
                          time.time())

    def search_upload(self, data: bytes, k: int) -> Answer:
        """Decode an uploaded image file as simclr-embed decodes it, embed it and search."""
        started = time.perf_counter()
        try:
            with self._decode_slots:
                image = decode_image(io.BytesIO(data), self.encoder.identity.image_size, self.max_query_pixels)
        except DECODE_ERRORS as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
            if "cannot identify image file" in reason:
                reason = "not an image file in a format Pillow reads"
            raise QueryError(f"the upload ({len(data):,} bytes) cannot be decoded: {type(error).__name__}: "
                             f"{reason}") from None
        decoded = time.perf_counter()
        embedding = self.encoder.embed(image[None])[0]
        return self._answer("upload", None, embedding, k, {"decode": decoded - started,
                                                           "embed": time.perf_counter() - decoded})

    def search_row(self, row: int, k: int, exclude_query: bool = False) -> Answer:
        """Search with the stored embedding of an indexed row; `exclude_query` leaves that row out of the k
        neighbours (it would be the first)."""
        collection = self.collection
        self.check_row(row, collection)
        try:
            embedding = collection.vectors.rows([row], normalise=False)[0]
        except (OSError, ValueError) as error:
            raise QueryError(f"row {row}: {first_line(error)}; POST /reload (or SIGHUP) loads it as it is now",
                             409) from None
        return self._answer(collection.features.paths[row], row, embedding, k, {}, collection, exclude_query)

    def search_path(self, path: str, k: int, exclude_query: bool = False) -> Answer:
        """Search with the stored embedding of an indexed image, named by its path (`exclude_query`: as
        `search_row`)."""
        row = self.collection.rows_by_path.get(path_key(path))
        if row is None:
            raise QueryError(f"path {path!r} is not in the index", status=404)
        return self.search_row(row, k, exclude_query)

    def _answer(self, query: str, query_row: int | None, embedding: np.ndarray, k: int, timing: dict[str, float],
                collection: Collection | None = None, exclude_query: bool = False) -> Answer:
        """The k nearest rows to `embedding`, ranked from 1; with `exclude_query`, k + 1 are searched and
        `query_row` is dropped from them."""
        if not 1 <= k <= MAX_K:
            raise QueryError(f"k {k}: must be between 1 and {MAX_K}")
        collection = collection or self.collection
        dropped = query_row if exclude_query else None
        started = time.perf_counter()
        try:
            scores, rows = search(collection.index, embedding[None], k + (dropped is not None), collection.vectors)
        except (OSError, ValueError) as error:  # a features file rewritten in place while served
            raise QueryError(f"{first_line(error)}; POST /reload (or SIGHUP) loads the collection as it is now",
                             409) from None
        timing["search"] = time.perf_counter() - started
        found = [(float(score), int(row)) for score, row in zip(scores[0], rows[0], strict=True)
                 if row >= 0 and row != dropped][:k]
        neighbours = [{"rank": rank + 1, "score": score, "path": collection.features.paths[row], "row": row}
                      for rank, (score, row) in enumerate(found)]
        timing_ms = {name: round(1e3 * seconds, 3) for name, seconds in timing.items()}
        timing_ms["total"] = round(sum(timing_ms.values()), 3)
        return Answer(query, query_row, neighbours, [float(value) for value in embedding], timing_ms)

    def check_row(self, row: int, collection: Collection | None = None) -> None:
        features = (collection or self.collection).features
        count = len(features.paths)
        if not 0 <= row < count:
            raise QueryError(f"row {row}: the index has rows 0 to {count - 1}", status=404)
        if row in features.removed:
            raise QueryError(f"row {row}: removed from the index", status=404)

    def open_file(self, row: int) -> OpenedFile:
        """The open file of an indexed row: only the file that was embedded, inside the embedded folders, through
        no link (QueryError 404 when it is gone, 409 when it changed; `search/files.py`)."""
        collection = self.collection
        self.check_row(row, collection)
        features = collection.features
        recorded = features.files[row] if row < len(features.files) else None
        return open_collection_file(row, features.paths[row], features.roots, recorded)

    def thumbnail(self, row: int, size: int) -> bytes:
        """A JPEG of the row's image fitted in size x size (cached while the file's size and mtime stay)."""
        if size not in THUMBNAIL_SIZES:
            raise QueryError(f"size {size}: must be between {THUMBNAIL_SIZES.start} and {THUMBNAIL_SIZES.stop - 1}")
        opened = self.open_file(row)
        with opened.file:
            key = (self.collection.features.paths[row], size, opened.size, opened.mtime_ns)
            with self._thumbnails_lock:
                if key in self._thumbnails:
                    self._thumbnails.move_to_end(key)
                    return self._thumbnails[key]
            try:
                with self._decode_slots:
                    thumbnail = _thumbnail_jpeg(opened.file, size)
            except DECODE_ERRORS as error:
                raise QueryError(f"row {row}: its file cannot be decoded ({type(error).__name__})", 404) from None
        with self._thumbnails_lock:
            self._thumbnails[key] = thumbnail
            while len(self._thumbnails) > THUMBNAILS_CACHED:
                self._thumbnails.popitem(last=False)
        return thumbnail

    def info(self) -> dict:
        """Model identity, index kind and size, the recall the index measured when it was built."""
        collection, encoder = self.collection, self.encoder
        report = collection.report or {}
        kind = report.get("kind") or type(collection.index).__name__
        recall = 1.0 if kind == "flat" else report.get("recall_at_10")
        return {"model": encoder.identity.as_dict(), "model_source": encoder.source,
                "features": str(self.features_path), "images": len(collection.features.paths),
                "dim": int(collection.index.d),
                "index": {"kind": kind, "description": report.get("description"),
                          "vectors": int(collection.index.ntotal), "removed": len(collection.features.removed),
                          "nlist": report.get("nlist"), "nprobe": report.get("nprobe"),
                          "ef_search": report.get("ef_search"), "recall_at_10": recall,
                          "query_ms": report.get("query_ms"), "bytes": report.get("index_bytes")},
                "loaded_at": collection.loaded_at}


def _thumbnail_jpeg(file, size: int) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(file) as image:
        image.draft("RGB", (size, size))
        picture = to_rgb(ImageOps.exif_transpose(image))
        picture.thumbnail((size, size))
        encoded = io.BytesIO()
        picture.save(encoded, format="JPEG", quality=85)
        return encoded.getvalue()
