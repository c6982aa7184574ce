"""`simclr index`'s work on disk: build the index of one or several features files (reading them in chunks), add
the rows of new features files to it, remove rows by path, or carry the index of a sharded run's parts over to their
merged file, keeping its manifest true."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from simclr.embed.features import load_parts, path_key
from simclr.embed.shards import PART_PATTERN
from simclr.embed.sidecar import FeaturesHeader, read_header, sidecar_path
from simclr.locks import output_lock
from simclr.search.index import IndexReport, add_vectors, build_index, remove_rows, renumber_rows
from simclr.search.store import IndexManifest, StaleIndexError, index_path, load_index, read_manifest, save_index
from simclr.search.vectors import vector_source

log = logging.getLogger("simclr")


def default_index_file(parts: list[Path]) -> Path:
    """Beside the first features file: feats.npy -> feats.faiss, and all N parts feats-K-of-N.npy ->
    feats-of-N.faiss (feats.faiss is the index of their merged file, feats.npy)."""
    first = Path(parts[0])
    match = PART_PATTERN.fullmatch(first.stem)
    if match and len(parts) == int(match["count"]):
        return first.with_name(f"{match['stem']}-of-{match['count']}.faiss")
    return index_path(first)


def _headers(parts: list[Path]) -> list[FeaturesHeader | None]:
    """Each part's sidecar header, or None (with a warning) for a bare .npy of vectors."""
    headers = []
    for part in parts:
        if not Path(part).is_file():
            raise FileNotFoundError(f"{part}: no such features file")
        sidecar = sidecar_path(part)
        if not sidecar.is_file():
            log.warning("%s has no sidecar (%s): its rows are indexed by number, and no model is recorded",
                        part, sidecar.name)
            headers.append(None)
            continue
        headers.append(read_header(part))
    known = [(part, header) for part, header in zip(parts, headers, strict=True) if header]
    for part, header in known[1:]:
        if header.model != known[0][1].model:
            raise ValueError(f"{part} was embedded with {header.model.name} v{header.model.version}, {known[0][0]} "
                             f"with {known[0][1].model.name} v{known[0][1].model.version}: one index holds one "
                             "model's rows")
    return headers


def build_index_files(parts: list[Path], index_file: Path | None = None, forget_removed: bool = False,
                      **options) -> tuple[Path, IndexReport]:
    """Build and save the index of the features files `parts` (rows in that order); `options` go to build_index.
    Images taken out of the index this replaces (`simclr index --remove`) stay out, unless `forget_removed`."""
    parts = [Path(part) for part in parts]
    _headers(parts)
    index_file = Path(index_file or default_index_file(parts))
    with output_lock(index_file):
        removed_paths = () if forget_removed else removals_of(index_file)
        index, report = build_index(vector_source(parts), **options)
        save_index(index, parts, report, leave_out(index, parts, removed_paths), index_file, removed_paths)
    return index_file, report


def removals_of(index_file: Path) -> tuple[str, ...]:
    """The images taken out of the index at `index_file` (its manifest's record; none when there is no readable
    one)."""
    try:
        return read_manifest(index_file).removed_paths
    except StaleIndexError:
        return ()


def leave_out(index, parts: list[Path], removed_paths: tuple[str, ...]) -> tuple[int, ...]:
    """Take the rows of `removed_paths` out of a freshly built `index` of `parts`; the row ids taken out.
    ValueError for an HNSW index (it cannot remove) that would have to."""
    if not removed_paths:
        return ()
    keys = set(removed_paths)
    rows = [row for row, path in enumerate(load_parts(parts).paths) if path_key(path) in keys]
    if rows:
        try:
            remove_rows(index, rows)
        except ValueError as error:
            raise ValueError(f"{len(rows)} images were taken out of this index with --remove and must stay out, "
                             f"but {error}; or give --forget-removed to index them again") from None
    return tuple(rows)


def add_index_files(index_file: Path, new_parts: list[Path]) -> IndexManifest:
    """Append the rows of `new_parts` to the index (no rebuild: an IVF index puts them in its trained lists) and to
    its manifest. They must come from the model of the indexed parts (or be bare vectors of the same width)."""
    with output_lock(index_file):
        return _add(Path(index_file), new_parts)


def _add(index_file: Path, new_parts: list[Path]) -> IndexManifest:
    index, manifest = load_index(index_file, mmap=False)
    parts = manifest.part_paths(index_file.parent)
    new_parts = [Path(part) for part in new_parts]
    if already := {part.resolve() for part in parts} & {part.resolve() for part in new_parts}:
        raise ValueError(f"--add {', '.join(map(str, already))}: already in {index_file}")
    _check_addition(parts, new_parts, manifest.removed)
    _headers(parts + new_parts)
    source = vector_source(new_parts)
    if source.dim != index.d:
        raise ValueError(f"--add: rows of {source.dim} dimensions, {index_file} holds {index.d}")
    add_vectors(index, source, sum(part.rows for part in manifest.parts))
    save_index(index, parts + new_parts, manifest.report, manifest.removed, index_file, manifest.removed_paths)
    return read_manifest(index_file)


def _check_addition(parts: list[Path], new_parts: list[Path], removed: tuple[int, ...]) -> None:
    """ValueError unless `new_parts` can join an index of `parts`: bare vectors only beside bare vectors (readers
    need every row's path), and no image that is indexed already (it would be found twice)."""
    if not any(sidecar_path(part).is_file() for part in parts):
        return
    bare = [part for part in new_parts if Path(part).is_file() and not sidecar_path(part).is_file()]
    if bare:
        raise ValueError(f"--add {bare[0]}: bare vectors (no sidecar) cannot join an index of embedded images, "
                         "whose readers need each row's path; embed those images with simclr-embed")
    out = set(removed)
    indexed = {path_key(path) for row, path in enumerate(load_parts(parts).paths) if row not in out}
    again = [path for path in load_parts(new_parts).paths if path_key(path) in indexed]
    if again:
        raise ValueError(f"--add: {len(again)} of its images are in the index already (e.g. {again[0]}); an image "
                         "is indexed once (--remove it first to replace it)")


def remove_index_paths(index_file: Path, paths: list[str]) -> tuple[IndexManifest, list[str]]:
    """Take the rows of the images at `paths` out of the index; the manifest records them. Returns the manifest and
    the paths that were already out (a path given twice counts once). ValueError names paths that were never
    indexed (nothing is changed)."""
    with output_lock(index_file):
        return _remove(Path(index_file), paths)


def _remove(index_file: Path, paths: list[str]) -> tuple[IndexManifest, list[str]]:
    paths = list({path_key(path): path for path in paths}.values())  # each image once, however it is spelt
    index, manifest = load_index(index_file, mmap=False)
    features = load_parts(manifest.part_paths(index_file.parent))
    rows: dict[str, list[int]] = {}
    for row, path in enumerate(features.paths):
        rows.setdefault(path_key(path), []).append(row)
    unknown = [path for path in paths if path_key(path) not in rows]
    if unknown:
        raise ValueError(f"--remove: not in {index_file}: {', '.join(unknown[:5])}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    wanted = sorted({row for path in paths for row in rows[path_key(path)]})
    already_out = set(manifest.removed)
    removing = [row for row in wanted if row not in already_out]
    if removing:
        remove_rows(index, removing)
        gone = (*manifest.removed_paths, *(path_key(features.paths[row]) for row in removing))
        save_index(index, manifest.part_paths(index_file.parent), manifest.report, (*manifest.removed, *removing),
                   index_file, gone)
    skipped = [path for path in paths if all(row in already_out for row in rows[path_key(path)])]
    return read_manifest(index_file), skipped


def index_after_merge(parts: list[Path], merged: Path, part_rows: dict[Path, np.ndarray]) -> Path | None:
    """Carry the index of a sharded run's parts (feats-of-N.faiss beside them) over to their merged file: its row
    ids renumbered to the merged rows (`part_rows`: each part's rows there), saved beside `merged` and bound to it.
    None when there is no such index, or (with a warning naming why) when it cannot follow and is left as it was."""
    first = Path(parts[0])
    match = PART_PATTERN.fullmatch(first.stem)
    # feats.faiss: where an index of the parts was written before such indexes were named after them
    legacy = [first.with_name(f"{match['stem']}.faiss")] if match else []
    index_file = next((path for path in [default_index_file(parts), *legacy] if path.is_file()), None)
    if index_file is None:
        return None
    try:
        index, manifest = load_index(index_file, mmap=False)
        indexed = [path.resolve() for path in manifest.part_paths(index_file.parent)]
        rows_of = {Path(path).resolve(): rows for path, rows in part_rows.items()}
        if sorted(indexed) != sorted(rows_of):
            raise ValueError(f"it indexes {', '.join(part.features.name for part in manifest.parts)}, not these "
                             "parts")
        new_ids = np.concatenate([rows_of[path] for path in indexed])
        renumber_rows(index, new_ids)
    except StaleIndexError as stale:  # its message names the index
        log.warning("%s; the index is left as it was", stale)
        return None
    except ValueError as error:
        log.warning("%s: %s; the index is left as it was", index_file, error)
        return None
    return save_index(index, merged, manifest.report, tuple(int(new_ids[row]) for row in manifest.removed),
                      index_path(merged), manifest.removed_paths)
