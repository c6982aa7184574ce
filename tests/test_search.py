"""simclr index and simclr-search: retrieval of augmented views, index round trips, recall, refusals, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.embed.encoder import ModelIdentity
from simclr.embed.features import load_features
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.runner import embed_images
from simclr.embed.sidecar import FeaturesHeader
from simclr.search.index import build_index, search
from simclr.search.store import index_path, load_index, save_index


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _mild_view(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A crop keeping 85-100% of each side, resized back, maybe mirrored, with +-5% brightness and saturation."""
    width, height = image.size
    side = rng.uniform(0.85, 1.0)
    crop_w, crop_h = round(width * side), round(height * side)
    left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
    view = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BICUBIC)
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.95, 1.05))
    return ImageEnhance.Color(view).enhance(rng.uniform(0.95, 1.05))


@pytest.fixture(scope="module")
def collection(shapes_folder: Path, tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten generated pictures, one per folder, embedded with the session's tiny encoder (version 1)."""
    root = tmp_path_factory.mktemp("collection")
    for index, path in enumerate(sorted(shapes_folder.iterdir())[:10]):
        (root / "images" / f"picture{index}").mkdir(parents=True)
        Image.open(path).save(root / "images" / f"picture{index}" / "0000.png")
    embed_images([root / "images"], root / "feats.npy", OnnxEncoder(tiny_repo / "tiny" / "1"), workers=0,
                 progress=False)
    return root / "feats.npy"


def test_mildly_augmented_views_find_their_originals(collection: Path, tmp_path: Path) -> None:
    originals = load_features(collection).paths
    rng = np.random.default_rng(0)
    for index, path in enumerate(originals):
        _mild_view(Image.open(path).convert("RGB"), rng).save(tmp_path / f"{index:02d}.png")
    # No --model: the query model is the one recorded in the index's sidecar.
    result = _cli("search", str(tmp_path), "--index", str(collection), "-k", "1", "--json")
    assert result.exit_code == 0, result.output
    found = [entry["neighbours"][0]["path"] for entry in json.loads(result.stdout)["results"]]
    assert found == originals


def test_search_prints_rank_score_path_and_builds_the_missing_index(collection: Path) -> None:
    index_path(collection).unlink(missing_ok=True)
    query = load_features(collection).paths[3]
    result = _cli("search", query, "--index", str(collection), "-k", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"query {query}"
    rank, score, path = lines[1].split()
    assert (rank, path) == ("1", query) and float(score) == pytest.approx(1.0, abs=1e-4)
    assert len(lines) == 4 and index_path(collection).exists()


def test_grid_is_a_contact_sheet(collection: Path, tmp_path: Path) -> None:
    queries = load_features(collection).paths[:2]
    result = _cli("search", *queries, "--index", str(collection), "-k", "4", "--grid", str(tmp_path / "grid.png"))
    assert result.exit_code == 0, result.output
    sheet = Image.open(tmp_path / "grid.png")
    assert sheet.size == (5 * 104, 2 * (104 + 16))
    assert len(set(np.asarray(sheet.convert("L")).ravel().tolist())) > 20  # thumbnails, not a blank sheet


def test_a_different_model_is_refused(collection: Path, tiny_repo: Path) -> None:
    query = load_features(collection).paths[0]
    result = _cli("search", query, "--index", str(collection), "--model", str(tiny_repo / "tiny" / "2"))
    assert result.exit_code == 1
    assert "was embedded with model tiny v1" in result.output and "query model is tiny v2" in result.output


def _copy_collection(collection: Path, folder: Path) -> Path:
    other = folder / "feats.npy"
    for suffix in (".npy", ".jsonl"):
        other.with_suffix(suffix).write_bytes(collection.with_suffix(suffix).read_bytes())
    return other


def _top1(query: str, index: Path) -> tuple[str, str]:
    result = _cli("search", query, "--index", str(index), "-k", "1", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"][0]["neighbours"][0]["path"], result.output


@pytest.mark.parametrize("damage", ["other-features", "wrong-count", "bit-flip", "no-record"])
def test_a_stale_or_damaged_index_is_never_used(collection: Path, tmp_path: Path, damage: str) -> None:
    other = _copy_collection(collection, tmp_path)
    features = load_features(other)
    vectors = np.array(features.vectors)  # a copy: the file under the memory map is rewritten below
    wrong = {"other-features": vectors[::-1].copy()}.get(damage, vectors)
    index, _ = build_index(wrong, "flat")
    save_index(index, other)
    if damage == "other-features":  # an index built for these features, then the features change under it
        np.save(other, vectors[::-1].copy())
        save_index(index, other)
        np.save(other, vectors)
    elif damage == "bit-flip":
        data = bytearray(index_path(other).read_bytes())
        data[-20] ^= 0x40
        index_path(other).write_bytes(bytes(data))
    elif damage == "wrong-count":
        manifest = Path(f"{index_path(other)}.json")
        manifest.write_text(manifest.read_text().replace(f'"vectors": {len(vectors)}', '"vectors": 5'))
    elif damage == "no-record":
        Path(f"{index_path(other)}.json").unlink()
    before = {path: path.read_bytes() for path in (index_path(other), Path(f"{index_path(other)}.json"))
              if path.exists()}
    found, output = _top1(features.paths[3], other)
    assert found == features.paths[3]  # rebuilt from the features: the right neighbour, never the stale one
    assert "exact index built in memory" in output
    after = {path: path.read_bytes() for path in before}
    assert after == before  # a reader writes nothing: a writer may be changing the index meanwhile


def test_unreadable_query_is_reported_not_fatal(collection: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    result = _cli("search", str(tmp_path / "broken.jpg"), load_features(collection).paths[0],
                  "--index", str(collection), "-k", "1")
    assert result.exit_code == 0
    assert "broken.jpg: unreadable" in result.stdout


def test_index_round_trip_gives_the_same_answers(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    index, report = build_index(vectors, "auto")
    assert report.kind == "flat" and report.recall_at_10 == 1.0
    np.save(tmp_path / "x.npy", vectors)
    save_index(index, tmp_path / "x.npy")
    queries = vectors[:7] + 0.01
    loaded, _ = load_index(index_path(tmp_path / "x.npy"))
    before, after = search(index, queries, 5), search(loaded, queries, 5)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0])
    assert (before[1][:, 0] == np.arange(7)).all()


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
@pytest.mark.slow
def test_approximate_index_reports_its_recall(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((100, 32))
    vectors = (centres[rng.integers(0, 100, 20_000)] + 0.3 * rng.standard_normal((20_000, 32))).astype(np.float32)
    np.save(tmp_path / "feats.npy", vectors)
    header = FeaturesHeader(model=ModelIdentity("synthetic", "1", "", 32, 32), model_source="", inputs=("synthetic",),
                            cwd=".", normalized=False, images=len(vectors)).to_json()
    records = [json.dumps({"row": i, "path": f"{i}.png"}) for i in range(len(vectors))]
    summary = json.dumps({"summary": {"rows": len(vectors), "failed": 0, "dim": 32}})
    (tmp_path / "feats.jsonl").write_text("\n".join([json.dumps(header), *records, summary]) + "\n")
    result = _cli("index", str(tmp_path / "feats.npy"), "--kind", kind, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == kind and report["nlist"] > 1 and 1 <= report["nprobe"] <= report["nlist"]
    assert report["recall_at_10"] >= (0.95 if kind == "ivf" else 0.5)
    assert load_index(tmp_path / "feats.faiss")[0].ntotal == 20_000


def test_index_of_a_missing_file_is_one_line(tmp_path: Path) -> None:
    result = _cli("index", str(tmp_path / "nothing.npy"))
    assert result.exit_code == 1 and "no such features file" in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize("nlist", [0, 5001])
def test_an_impossible_nlist_is_named(nlist: int) -> None:
    vectors = np.random.default_rng(0).standard_normal((5000, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=f"--nlist {nlist}: must be 1 to the number of vectors \\(5000\\)"):
        build_index(vectors, "ivf", nlist=nlist)


def test_removed_images_stay_out_through_every_rebuild(tiny_repo: Path, real_photos: Path, tmp_path: Path) -> None:
    from simclr.search.query import open_index
    from simclr.search.store import read_manifest

    features = tmp_path / "feats.npy"
    encoder = OnnxEncoder(tiny_repo / "tiny")
    embed_images([real_photos / "sample"], features, encoder, workers=0, progress=False)
    assert _cli("index", str(features), "--kind", "flat").exit_code == 0
    gone = load_features(features).paths[2]
    assert _cli("index", str(features), "--remove", gone).exit_code == 0

    def searchable() -> set[str]:
        loaded, index = open_index(features)
        _, rows = search(index, np.eye(1, index.d, dtype=np.float32), index.ntotal)
        assert all(row not in loaded.removed for row in rows[0])
        return {loaded.paths[row] for row in rows[0] if row >= 0}

    assert gone not in searchable()
    assert _cli("index", str(features), "--kind", "flat").exit_code == 0  # an explicit rebuild
    assert gone not in searchable() and gone in read_manifest(index_path(features)).removed_paths
    embed_images([real_photos / "sample"], features, encoder, workers=0, progress=False)  # now stale: rebuilt exact
    assert gone not in searchable()
    hnsw = _cli("index", str(features), "--kind", "hnsw")
    assert hnsw.exit_code == 1 and "--forget-removed" in hnsw.output and hnsw.output.count("\n") == 1
    assert gone not in searchable()  # the refused rebuild left the index as it was
    assert _cli("index", str(features), "--kind", "flat", "--forget-removed").exit_code == 0
    assert gone in searchable()


def test_add_refuses_bare_vectors_and_images_already_in_and_remove_counts_each_image_once(
        tiny_repo: Path, real_photos: Path, tmp_path: Path) -> None:
    encoder = OnnxEncoder(tiny_repo / "tiny")
    features, copy = tmp_path / "feats.npy", tmp_path / "copy.npy"
    for out in (features, copy):
        embed_images([real_photos / "sample"], out, encoder, workers=0, progress=False)
    assert _cli("index", str(features), "--kind", "flat").exit_code == 0
    np.save(tmp_path / "bare.npy", np.ones((3, encoder.identity.embedding_dim), np.float32))
    for added, words in (("bare.npy", "bare vectors (no sidecar) cannot join"), ("copy.npy", "in the index already")):
        refused = _cli("index", str(features), "--add", str(tmp_path / added))
        assert refused.exit_code == 1 and words in refused.output and refused.output.count("\n") == 1, refused.output
    path = load_features(features).paths[0]
    twice = _cli("index", str(features), "--remove", path, "--remove", str(Path(path).parent / "." / Path(path).name),
                 "--json")
    assert twice.exit_code == 0 and json.loads(twice.stdout)["removed"] == 1
    assert _cli("index", str(features), "--add", str(copy)).exit_code == 1  # still: its other images are in
