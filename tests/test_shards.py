"""simclr-embed --shard K/N and simclr merge: N jobs then a merge write what one run writes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.runner import embed_images
from simclr.embed.shards import merge_shards, parse_shard, shard_path
from simclr.search.store import read_manifest


@pytest.fixture(scope="module")
def collection(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test images plus a file that does not decode (so the parts hold failures too)."""
    root = tmp_path_factory.mktemp("collection") / "images"
    shutil.copytree(image_folder, root)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.mark.parametrize("count", [2, 3])
def test_n_jobs_then_merge_equal_one_run(collection: Path, tiny_repo: Path, tmp_path: Path, count: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    encoder = OnnxEncoder(tiny_repo / "tiny")
    one = embed_images([collection], Path("one/feats.npy"), encoder, workers=0, progress=False)
    for index in range(count):
        part = embed_images([collection], Path("many/feats.npy"), encoder, workers=0, progress=False,
                            shard=(index, count))
        assert part.features == shard_path(Path("many/feats.npy"), index, count)
    parts = [shard_path(Path("many/feats.npy"), index, count) for index in reversed(range(count))]
    merged = merge_shards(parts, Path("many/feats.npy"), batch=2)
    assert (merged.rows, merged.failed) == (one.rows, one.failed) and one.failed == 1
    assert Path("many/feats.npy").read_bytes() == Path("one/feats.npy").read_bytes()
    assert Path("many/feats.jsonl").read_text().splitlines() == Path("one/feats.jsonl").read_text().splitlines()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_the_index_of_the_parts_follows_the_merge(collection: Path, tiny_repo: Path, tmp_path: Path, kind: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    encoder = OnnxEncoder(tiny_repo / "tiny")
    parts = [str(embed_images([collection], Path("feats.npy"), encoder, workers=0, progress=False,
                              shard=(job, 3)).features) for job in range(3)]
    images = sorted(str(path) for path in collection.rglob("*.png"))
    assert CliRunner().invoke(app, ["index", *parts, "--kind", kind]).exit_code == 0
    if kind != "hnsw":  # a removed row stays removed under its new number
        assert CliRunner().invoke(app, ["index", *parts, "--remove", images[1]]).exit_code == 0

    def neighbours(index: str) -> list[list[str]]:
        result = CliRunner().invoke(app, ["search", *images[:4], "--index", index, "-k", "5", "--json"])
        assert result.exit_code == 0, result.output
        return [[found["path"] for found in entry["neighbours"]] for entry in json.loads(result.stdout)["results"]]

    before = neighbours("feats-of-3.faiss")
    merged = CliRunner().invoke(app, ["merge", *parts, "--out", "feats.npy", "--json"])
    assert merged.exit_code == 0, merged.output
    assert json.loads(merged.stdout)["index"] == "feats.faiss"
    manifest = read_manifest(Path("feats.faiss"))
    assert [part.features.name for part in manifest.parts] == ["feats.npy"]
    assert neighbours("feats.npy") == before
    if kind != "hnsw":
        assert len(manifest.removed) == 1 and all(str(images[1]) not in found for found in before)


def test_merge_refuses_incomplete_or_foreign_parts(collection: Path, tiny_repo: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    encoder = OnnxEncoder(tiny_repo / "tiny")
    for index in range(3):
        embed_images([collection], Path("feats.npy"), encoder, workers=0, progress=False, shard=(index, 3))
    embed_images([collection], Path("other.npy"), encoder, workers=0, progress=False, shard=(2, 4))  # 4 jobs
    embed_images([collection / "group0"], Path("group.npy"), encoder, workers=0, progress=False, shard=(2, 3))
    embed_images([collection], Path("whole.npy"), encoder, workers=0, progress=False)
    cases = [
        (["feats-0-of-3.npy", "feats-1-of-3.npy"], "parts of 3: missing 2"),
        (["feats-0-of-3.npy", "feats-1-of-3.npy", "feats-1-of-3.npy"], "parts of 3: missing 2"),
        (["feats-0-of-3.npy", "feats-1-of-3.npy", "other-2-of-4.npy"], "part of another list of images"),
        (["feats-0-of-3.npy", "feats-1-of-3.npy", "group-2-of-3.npy"], "other inputs or other settings"),
        (["feats-0-of-3.npy", "whole.npy"], "whole.npy: not a part of a sharded run"),
        (["feats-0-of-3.npy", "feats-9-of-3.npy"], "feats-9-of-3.npy: no such part"),
    ]
    for parts, message in cases:
        result = CliRunner().invoke(app, ["merge", *parts, "--out", "merged.npy"])
        assert result.exit_code == 1 and message in result.output, result.output
        assert result.output.count("\n") == 1
    assert not Path("merged.npy").exists()
    assert CliRunner().invoke(app, ["index", "feats-0-of-3.npy", "feats-1-of-3.npy", "--out", "feats.faiss"]
                              ).exit_code == 0
    kept = Path("feats.faiss.json").read_text()
    result = CliRunner().invoke(app, ["merge", "feats-0-of-3.npy", "feats-1-of-3.npy", "feats-2-of-3.npy"])
    assert result.exit_code == 0 and "it indexes feats-0-of-3.npy, feats-1-of-3.npy, not these parts" in result.stderr
    assert Path("feats.faiss.json").read_text() == kept  # an index of other files is left as it was


def test_shard_option_is_checked() -> None:
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError, match=f"--shard {bad}: give K/N"):
            parse_shard(bad)


def _cut_summary(sidecar: Path) -> None:
    sidecar.write_text("".join(sidecar.read_text().splitlines(keepends=True)[:-1]))


def _wrong_row(sidecar: Path) -> None:
    lines = sidecar.read_text().splitlines(keepends=True)
    number = next(n for n, line in enumerate(lines) if n and json.loads(line).get("row") == 1)
    lines[number] = json.dumps({**json.loads(lines[number]), "row": 0}) + "\n"
    sidecar.write_text("".join(lines))


def _short_array(sidecar: Path) -> None:
    features = sidecar.with_suffix(".npy")
    os.truncate(features, features.stat().st_size - 4)


@pytest.mark.parametrize("damage, words", [(_cut_summary, "no summary line"), (_wrong_row, "where row 1 comes next"),
                                           (_short_array, "not a .npy array")])
def test_merge_refuses_a_damaged_part_in_one_line_naming_it(collection: Path, tiny_repo: Path, tmp_path: Path,
                                                            damage, words: str) -> None:
    encoder = OnnxEncoder(tiny_repo / "tiny")
    parts = [embed_images([collection], tmp_path / "feats.npy", encoder, workers=0, progress=False,
                          shard=(job, 2)).features for job in range(2)]
    damage(parts[1].with_suffix(".jsonl"))
    result = CliRunner().invoke(app, ["merge", *map(str, parts), "--out", str(tmp_path / "feats.npy")])
    assert result.exit_code == 1 and words in result.output and parts[1].stem in result.output, result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "feats.npy").exists()
    onto = CliRunner().invoke(app, ["merge", *map(str, parts), "--out", str(parts[0])])
    assert onto.exit_code == 1 and "is one of the parts" in onto.output
