"""simclr index at scale, in small: chunked reads, the plan for a memory budget, every kind tuned to its recall,
the budget held (peak RSS of a real process), --add and --remove, shards indexed and searched directly, bare
vectors, memory-mapped loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.embed.encoder import ModelIdentity
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.runner import embed_images
from simclr.embed.sidecar import FeaturesHeader
from simclr.embed.writer import FeatureWriter
from simclr.search import vectors as vectors_module
from simclr.search.index import build_index, recall_at_k, renumber_rows, search
from simclr.search.plan import parse_size, plan_index
from simclr.search.query import open_index
from simclr.search.store import load_index, read_manifest
from simclr.search.vectors import VectorFile, Vectors, normalise_in_place


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _clustered(count: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors around 200 centres with a spread like real embeddings' (neighbours close, not identical)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim))
    return (centres[rng.integers(0, 200, count)] + 0.6 * rng.standard_normal((count, dim))).astype(np.float32)


def _features(path: Path, vectors: np.ndarray, model: str = "synthetic") -> list[str]:
    """feats.npy + sidecar for `vectors`, written by the real FeatureWriter; returns the image paths."""
    paths = [f"{path.stem}/{row}.png" for row in range(len(vectors))]
    header = FeaturesHeader(model=ModelIdentity(model, "1", "", 32, vectors.shape[1]), model_source="",
                            inputs=(path.stem,), cwd=os.getcwd(), normalized=False, images=len(vectors))
    with FeatureWriter(path, vectors.shape[1], header, resume=False) as writer:
        writer.write(paths, [None] * len(paths), vectors, [None] * len(paths))
        writer.finish()
    return paths


def test_a_vector_file_is_read_in_chunks_and_bad_files_are_named(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = _clustered(1000, 16)
    np.save(tmp_path / "v.npy", vectors)
    monkeypatch.setattr(vectors_module, "CHUNK_BYTES", 64 * 16 * 4)  # 64 rows a chunk
    source = VectorFile(tmp_path / "v.npy")
    chunks = [(start, chunk.copy()) for start, chunk in source.chunks()]
    assert [start for start, _ in chunks] == list(range(0, 1000, 64))
    expected = normalise_in_place(vectors.copy())
    np.testing.assert_allclose(np.concatenate([chunk for _, chunk in chunks]), expected, rtol=1e-6)
    np.testing.assert_allclose(source.rows(np.array([999, 3, 500])), expected[[999, 3, 500]], rtol=1e-6)
    np.save(tmp_path / "int.npy", np.zeros((4, 4), np.int64))
    np.save(tmp_path / "flat.npy", np.zeros(16, np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "v.npy").read_bytes()[:5000])
    (tmp_path / "text.npy").write_text("no")
    for name, message in [("int", "int64 of shape"), ("flat", "shape \\(16,\\)"), ("cut", "shorter than"),
                          ("text", "not a .npy array")]:
        with pytest.raises(ValueError, match=f"{name}.npy: .*{message}"):
            VectorFile(tmp_path / f"{name}.npy")


def test_the_plan_fits_the_budget_or_names_it() -> None:
    assert parse_size("2G") == 2 << 30 and parse_size("512MiB") == 512 << 20 and parse_size("1.5g") == 3 << 29
    with pytest.raises(ValueError, match="--memory-budget lots"):
        parse_size("lots")
    assert [plan_index(count, 512).kind for count in (10_000, 100_000, 2_000_000)] == ["flat", "hnsw", "ivf"]
    five_million = plan_index(5_000_000, 512, available=(2 << 30) - (200 << 20))
    assert five_million.kind == "ivfpq" and five_million.opq
    assert five_million.peak_bytes <= (2 << 30) - (200 << 20)
    assert five_million.index_bytes < 5_000_000 * 512  # compressed at least 4x
    assert plan_index(5_000_000, 512, available=16 << 30).kind == "ivf"
    assert plan_index(500_000, 512, available=900 << 20).kind == "ivfpq"  # HNSW (1.4 GiB) and IVF do not fit
    with pytest.raises(ValueError, match="--memory-budget: .* the smallest .* needs about"):
        plan_index(5_000_000, 512, available=50 << 20)
    with pytest.raises(ValueError, match="--memory-budget"):
        plan_index(5_000_000, 512, kind="flat", available=1 << 30)


def test_a_small_collection_gets_what_it_can_train_and_a_kind_that_does_not_suit_it_is_named() -> None:
    small = plan_index(1750, 512, "ivfpq")
    assert (small.describe(), small.pq_bits, small.code_bytes, small.opq) == ("IVF43,PQ128x5", 5, 80, False)
    assert small.note.startswith("--kind ivfpq does not suit 1,750 vectors") and "cut to 5 bits" in small.note
    assert plan_index(1750, 512).kind == "flat" and not plan_index(1750, 512).note  # auto: nothing to say
    assert plan_index(1750, 512, "hnsw").note.startswith("--kind hnsw does not suit 1,750 vectors")
    large = plan_index(20_000, 512, "ivfpq")
    assert large.describe() == "OPQ128,IVF500,PQ128" and large.pq_bits == 8 and not large.note
    with pytest.raises(ValueError, match="--kind ivfpq: 50 vectors are too few .* use --kind flat"):
        plan_index(50, 16, "ivfpq")


def test_ivfpq_of_a_small_collection_trains_quietly_and_says_it_does_not_suit(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _features(tmp_path / "dogs.npy", _clustered(1750, 64))
    result = _cli("index", str(tmp_path / "dogs.npy"), "--kind", "ivfpq", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["description"] == "IVF43,PQ64x5" and report["pq_bits"] == 5 and report["pq_bytes"] == 40
    assert [line[:40] for line in report["warnings"]] == ["--kind ivfpq does not suit 1,750 vectors"]
    assert f"warning: {report['warnings'][0]}" in result.stderr
    assert "WARNING clustering" not in capfd.readouterr().err  # FAISS had the points it asks for


def test_faiss_warnings_come_as_one_line_and_each_stage_shows_progress(capfd: pytest.CaptureFixture[str]) -> None:
    _, report = build_index(_clustered(1000, 16), "ivf", nlist=100, progress=True)  # 100 lists want 3,900 rows
    assert report.warnings[1] == ('FAISS warned once while training: "WARNING clustering 1000 points to 100 '
                                  'centroids: please provide at least 3900 training points" (1x)')
    err = capfd.readouterr().err
    assert "WARNING clustering" not in err
    assert all(stage in err for stage in ("training IVF100,Flat on 1,000 rows", "adding", "tuning nprobe"))


def test_an_exact_index_over_max_query_ms_says_so(tmp_path: Path) -> None:
    _features(tmp_path / "f.npy", _clustered(500, 16))
    result = _cli("index", str(tmp_path / "f.npy"), "--kind", "flat", "--max-query-ms", "0.000001", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert not report["target_met"] and report["max_query_ms"] == 1e-6 and report["warnings"] == [report["note"]]
    assert "over --max-query-ms 1e-06: an exact index cannot trade recall for time" in report["note"]
    assert f"warning: {report['note']}" in result.stderr


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
@pytest.mark.slow
def test_each_kind_is_tuned_to_the_target_recall_or_says_why(kind: str) -> None:
    vectors = _clustered(20_000, 32)
    index, report = build_index(vectors, kind, target_recall=0.9)
    assert report.kind == kind and report.query_ms > 0 and report.peak_rss_bytes > 0
    queries = normalise_in_place(vectors[:200].copy())
    _, exact = search(build_index(vectors, "flat")[0], queries, 10)
    rows = Vectors(vectors)
    scores, found = search(index, queries, 10, rows)
    assert recall_at_k(found, exact) == pytest.approx(report.recall_at_10, abs=0.08)
    assert report.target_met == (report.recall_at_10 >= 0.9) and bool(report.note) != report.target_met
    assert report.target_met
    if kind == "ivfpq":  # its candidates are scored again with the rows: exact cosines, more of the true top 10
        cosines = np.einsum("qd,qkd->qk", queries, rows.rows(found.ravel()).reshape(*found.shape, -1))
        np.testing.assert_allclose(scores, cosines, atol=1e-5)
        _, codes_only = search(index, queries, 10)
        assert recall_at_k(found, exact) > recall_at_k(codes_only, exact)


def test_max_query_ms_stops_the_tuning_and_says_so() -> None:
    index, report = build_index(_clustered(20_000, 32), "ivf", target_recall=1.0, max_query_ms=1e-6)
    assert report.nprobe == 1 and not report.target_met and "within --max-query-ms" in report.note


@pytest.mark.slow
def test_the_process_stays_within_its_memory_budget(tmp_path: Path) -> None:
    _features(tmp_path / "small.npy", _clustered(1000, 64))
    _features(tmp_path / "feats.npy", _clustered(200_000, 64, seed=1))

    def index(features: str, *options: str) -> dict:
        result = subprocess.run([sys.executable, "-m", "simclr", "index", str(tmp_path / features), "--json",
                                 *options], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    baseline = index("small.npy", "--kind", "flat")["peak_rss_bytes"]  # the process itself: Python, FAISS, numpy
    budget = baseline + (60 << 20)  # the raw vectors alone take 49 MiB, an IVF index of them 66 MiB
    report = index("feats.npy", "--memory-budget", f"{budget >> 20}M", "--pq-bytes", "8")
    assert report["kind"] == "ivfpq" and report["peak_rss_bytes"] <= 1.2 * budget
    assert report["memory_budget"] == budget >> 20 << 20 and report["index_bytes"] < 200_000 * 64 * 4 / 4
    assert read_manifest(tmp_path / "feats.faiss").report["description"] == report["description"]


def test_rows_are_added_and_removed_without_a_rebuild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    vectors = _clustered(3000, 32)
    first = _features(Path("a.npy"), vectors[:2000])
    second = _features(Path("b.npy"), vectors[2000:])
    assert _cli("index", "a.npy", "--kind", "ivf", "--nlist", "16").exit_code == 0
    added = _cli("index", "a.npy", "--add", "b.npy", "--json")
    assert added.exit_code == 0, added.output and json.loads(added.stdout)["vectors"] == 3000
    features, index = open_index(Path("a.faiss"))
    assert features.paths == first + second and index.ntotal == 3000
    _, rows = search(index, vectors[2500:2501], 1)
    assert rows[0, 0] == 2500
    removed = _cli("index", "a.faiss", "--remove", second[500], "--remove", first[7], "--json")
    assert removed.exit_code == 0, removed.output
    features, index = open_index(Path("a.npy"))
    assert features.removed == {7, 2500} and index.ntotal == 2998
    _, rows = search(index, vectors[[2500, 7]], 5)
    assert not {7, 2500} & set(rows.ravel().tolist())
    again = _cli("index", "a.npy", "--remove", first[7], "--json")
    assert json.loads(again.stdout)["already_removed"] == [first[7]]
    for args, message in [(["--remove", "nowhere.png"], "not in a.faiss: nowhere.png"),
                          (["--add", "b.npy"], "already in a.faiss")]:
        result = _cli("index", "a.npy", *args)
        assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1
    _features(Path("other.npy"), vectors[:10], model="another")
    refused = _cli("index", "a.npy", "--add", "other.npy")
    assert refused.exit_code == 1 and "one index holds one model's rows" in refused.output
    assert read_manifest(Path("a.faiss")).vectors == 2998  # the refusals changed nothing


def test_hnsw_cannot_remove_and_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = _features(Path("h.npy"), _clustered(500, 16))
    assert _cli("index", "h.npy", "--kind", "hnsw").exit_code == 0
    result = _cli("index", "h.npy", "--remove", paths[0])
    assert result.exit_code == 1 and "an HNSW index cannot remove rows" in result.output


def test_row_ids_are_renumbered_in_every_kind_but_a_positional_hnsw() -> None:
    import faiss

    vectors = normalise_in_place(_clustered(2000, 16))
    order = np.random.default_rng(1).permutation(2000)  # row `old` becomes row order[old]
    for kind in ("flat", "ivf", "ivfpq", "hnsw"):
        index, _ = build_index(vectors, kind=kind, nlist=16 if kind.startswith("ivf") else None,
                               pq_bytes=8 if kind == "ivfpq" else None)
        _, before = search(index, vectors[:20], 5)
        renumber_rows(index, order)
        _, after = search(index, vectors[:20], 5)
        assert np.array_equal(after, order[before]), kind
    positional = faiss.IndexHNSWFlat(16, 16, faiss.METRIC_INNER_PRODUCT)  # as HNSW indexes were saved before
    positional.add(vectors)
    with pytest.raises(ValueError, match="numbers its rows by position"):
        renumber_rows(positional, order)


def test_bare_vectors_are_indexed_with_a_warning(tmp_path: Path) -> None:
    np.save(tmp_path / "bare.npy", _clustered(2000, 16))
    result = _cli("index", str(tmp_path / "bare.npy"), "--json")
    assert result.exit_code == 0, result.output
    assert "no sidecar" in result.stderr and "no model is recorded" in result.stderr
    index, manifest = load_index(tmp_path / "bare.faiss")
    assert index.ntotal == 2000 and manifest.parts[0].rows == 2000
    np.save(tmp_path / "wide.npy", _clustered(10, 8))
    wrong = _cli("index", str(tmp_path / "bare.npy"), "--add", str(tmp_path / "wide.npy"))
    assert wrong.exit_code == 1 and "rows of 8 dimensions" in wrong.output


def test_shards_are_indexed_and_searched_without_a_merge(image_folder: Path, tiny_repo: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    encoder = OnnxEncoder(tiny_repo / "tiny")
    for job in range(2):
        embed_images([image_folder], Path("feats.npy"), encoder, workers=0, progress=False, shard=(job, 2))
    built = _cli("index", "feats-0-of-2.npy", "feats-1-of-2.npy", "--json")
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["index"] == "feats-of-2.faiss"  # named after the parts: feats.faiss is feats.npy's
    embed_images([image_folder], Path("feats.npy"), encoder, workers=0, progress=False)  # their merge, beside them
    parts_manifest = Path("feats-of-2.faiss.json").read_text()
    queries = sorted(str(path) for path in image_folder.rglob("*.png"))[:3]
    answers = []
    for index in ("feats-of-2.faiss", "feats.npy"):  # feats.npy's index, feats.faiss, is built and saved
        result = _cli("search", *queries, "--index", index, "-k", "4", "--json")
        assert result.exit_code == 0, result.output
        assert "warning" not in result.stderr.lower()
        answers.append([[n["path"] for n in entry["neighbours"]] for entry in json.loads(result.stdout)["results"]])
    assert answers[0] == answers[1] and answers[0][0][0] == os.path.abspath(queries[0])
    assert [part.features.name for part in read_manifest(Path("feats.faiss")).parts] == ["feats.npy"]
    assert Path("feats-of-2.faiss.json").read_text() == parts_manifest  # the parts' index is left as it was


def test_an_index_opens_memory_mapped(tmp_path: Path) -> None:
    vectors = _clustered(100_000, 64)
    _features(tmp_path / "m.npy", vectors)
    assert _cli("index", str(tmp_path / "m.npy"), "--kind", "flat").exit_code == 0
    script = ("import sys, faiss; from simclr.search.store import load_index\n"
              "from simclr.search.index import resident_bytes\n"
              "before = resident_bytes(); index, _ = load_index(sys.argv[1], mmap=sys.argv[2] == 'mmap')\n"
              "print((resident_bytes() - before) >> 20)")
    grown = {mode: int(subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.faiss"), mode],
                                      capture_output=True, text=True, check=True).stdout) for mode in ("mmap", "read")}
    assert grown["mmap"] < 5 and grown["read"] >= 20  # 100,000 x 64 floats = 24 MiB
    mapped, _ = load_index(tmp_path / "m.faiss")
    read, _ = load_index(tmp_path / "m.faiss", mmap=False)
    queries = vectors[:20]
    np.testing.assert_array_equal(search(mapped, queries, 5)[1], search(read, queries, 5)[1])


@pytest.mark.slow
def test_an_index_write_killed_at_any_moment_leaves_a_usable_index(tmp_path: Path) -> None:
    from simclr.search.indexing import build_index_files

    for name in ("base", "extra"):
        np.save(tmp_path / f"{name}.npy", _clustered(150_000, 96))  # 58 MB each: hashing them takes a while
    index_file, _ = build_index_files([tmp_path / "base.npy"], kind="flat")
    saved = {path: path.read_bytes() for path in (index_file, Path(f"{index_file}.json"))}
    command = [sys.executable, "-m", "simclr", "index", str(index_file), "--add", str(tmp_path / "extra.npy")]

    def write(kill_after: float | None) -> float:
        """Restore the first pair, run --add, and SIGKILL it `kill_after` seconds after its new index file
        appears (None: let it finish); the seconds from then to its end."""
        for path, data in saved.items():
            path.write_bytes(data)
        writing = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".base.faiss.*.tmp")) and writing.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        started = time.monotonic()
        if kill_after is not None:
            time.sleep(kill_after)
            writing.send_signal(signal.SIGKILL)
        writing.wait()
        return time.monotonic() - started

    whole = write(None)  # writing the index, hashing, switching
    outcomes = set()
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.85, 0.95):
        write(fraction * whole)
        index, manifest = load_index(index_file)  # the old pair or the new one, whole: never "damaged"
        assert index.ntotal == manifest.vectors in (150_000, 300_000)
        outcomes.add(index.ntotal)
    assert 150_000 in outcomes  # at least one kill landed before the switch
