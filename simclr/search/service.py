"""The search service's state: the encoder (loaded once), the collection (features memory-mapped, FAISS index,
swapped whole by `reload`), and the queries it answers. No web code here: `search/api.py` serves it over HTTP."""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr.data.decode import DECODE_ERRORS, decode_image
from simclr.embed.encoder import Encoder, EncoderSpec
from simclr.embed.features import Features, path_key
from simclr.search.index import search
from simclr.search.query import check_model, exact_rows, open_index, query_encoder
from simclr.search.store import index_path, index_report

log = logging.getLogger("simclr")
MAX_K = 1000
THUMBNAIL_SIZES = range(16, 513)


class QueryError(ValueError):
    """A query the service cannot answer; `status` is the HTTP status that says why (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Collection:
    """One load of the features and their index; a reload builds a new one and swaps it in whole."""

    features: Features
    index: object  # faiss.Index
    rows_by_path: dict[str, int]
    report: dict | None  # how the index was built (kind, recall), as recorded beside it
    loaded_at: float


@dataclass(frozen=True)
class Answer:
    """What a search returns: the shape of `simclr-search --json`, plus the query's embedding and timings."""

    query: str
    neighbours: list[dict]
    embedding: list[float]
    timing_ms: dict[str, float]

    def as_dict(self) -> dict:
        return {"results": [{"query": self.query, "neighbours": self.neighbours}], "embedding": self.embedding,
                "timing_ms": self.timing_ms}


class SearchService:
    """Search a collection embedded by simclr-embed: by an uploaded photo, an indexed row or an indexed path."""

    def __init__(self, features_path: Path, spec: EncoderSpec | None = None) -> None:
        self.features_path = Path(features_path)
        # A query embeds one image between searches and HTTP work: spinning ONNX Runtime threads would slow those 2x.
        self.spec = dataclasses.replace(spec or EncoderSpec(), spin=False)
        self.encoder: Encoder | None = None
        self.collection: Collection | None = None
        self._reload_lock = threading.Lock()

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
        when the new one cannot be loaded, or was embedded with another model, the old one stays (ValueError)."""
        with self._reload_lock:
            collection = self._load_collection()
            check_model(collection.features, self.encoder)
            self.collection = collection
            log.info("reloaded %s: %d images", self.features_path, len(collection.features.paths))
            return collection

    def _load_collection(self) -> Collection:
        features, index = open_index(self.features_path, kind="auto")
        rows = {path_key(path): row for row, path in enumerate(features.paths) if row not in features.removed}
        index_file = self.features_path if self.features_path.suffix == ".faiss" else index_path(self.features_path)
        return Collection(features, index, rows, index_report(index_file), time.time())

    def search_upload(self, data: bytes, k: int) -> Answer:
        """Decode an uploaded image file as simclr-embed decodes it, embed it and search."""
        started = time.perf_counter()
        try:
            image = decode_image(io.BytesIO(data), self.encoder.identity.image_size)
        except DECODE_ERRORS as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
            if "cannot identify image file" in reason:
                reason = "not an image file in a format Pillow reads"
            raise QueryError(f"the upload ({len(data):,} bytes) cannot be decoded: {type(error).__name__}: "
                             f"{reason}") from None
        decoded = time.perf_counter()
        embedding = self.encoder.embed(image[None])[0]
        return self._answer("upload", embedding, k, {"decode": decoded - started,
                                                     "embed": time.perf_counter() - decoded})

    def search_row(self, row: int, k: int) -> Answer:
        """Search with the stored embedding of an indexed row."""
        collection = self.collection
        self.check_row(row, collection)
        embedding = np.asarray(collection.features.vectors[row], dtype=np.float32)
        return self._answer(collection.features.paths[row], embedding, k, {}, collection)

    def search_path(self, path: str, k: int) -> Answer:
        """Search with the stored embedding of an indexed image, named by its path."""
        row = self.collection.rows_by_path.get(path_key(path))
        if row is None:
            raise QueryError(f"path {path!r} is not in the index", status=404)
        return self.search_row(row, k)

    def _answer(self, query: str, embedding: np.ndarray, k: int, timing: dict[str, float],
                collection: Collection | None = None) -> Answer:
        if not 1 <= k <= MAX_K:
            raise QueryError(f"k {k}: must be between 1 and {MAX_K}")
        collection = collection or self.collection
        started = time.perf_counter()
        scores, rows = search(collection.index, embedding[None], k, exact_rows(collection.features))
        timing["search"] = time.perf_counter() - started
        neighbours = [{"rank": rank + 1, "score": float(score), "path": collection.features.paths[row], "row": int(row)}
                      for rank, (score, row) in enumerate(zip(scores[0], rows[0], strict=True)) if row >= 0]
        timing_ms = {name: round(1e3 * seconds, 3) for name, seconds in timing.items()}
        timing_ms["total"] = round(sum(timing_ms.values()), 3)
        return Answer(query, neighbours, [float(value) for value in embedding], timing_ms)

    def check_row(self, row: int, collection: Collection | None = None) -> None:
        features = (collection or self.collection).features
        count = len(features.paths)
        if not 0 <= row < count:
            raise QueryError(f"row {row}: the index has rows 0 to {count - 1}", status=404)
        if row in features.removed:
            raise QueryError(f"row {row}: removed from the index", status=404)

    def image_file(self, row: int) -> Path:
        """The file of an indexed row (only rows of the index can be read)."""
        self.check_row(row)
        path = Path(self.collection.features.paths[row])
        if not path.is_file():
            raise QueryError(f"row {row}: its file {path} is gone", status=404)
        return path

    def thumbnail(self, row: int, size: int) -> bytes:
        """A JPEG of the row's image fitted in size x size (cached, keyed by the file's modification time)."""
        if size not in THUMBNAIL_SIZES:
            raise QueryError(f"size {size}: must be between {THUMBNAIL_SIZES.start} and {THUMBNAIL_SIZES.stop - 1}")
        path = self.image_file(row)
        try:
            return _thumbnail(str(path), size, path.stat().st_mtime_ns)
        except DECODE_ERRORS as error:
            raise QueryError(f"row {row}: {path} cannot be decoded ({type(error).__name__})", status=404) from None

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


@functools.lru_cache(maxsize=4096)
def _thumbnail(path: str, size: int, mtime_ns: int) -> bytes:
    from PIL import Image, ImageOps

    from simclr.data.decode import to_rgb

    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        picture = to_rgb(ImageOps.exif_transpose(image))
        picture.thumbnail((size, size))
        encoded = io.BytesIO()
        picture.save(encoded, format="JPEG", quality=85)
        return encoded.getvalue()
