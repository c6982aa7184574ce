"""simclr-embed --shard K/N and simclr merge: N jobs then a merge write what one run writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.embed.runner import embed_images
from simclr.embed.shards import merge_shards, parse_shard, shard_path


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


def test_shard_option_is_checked() -> None:
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError, match=f"--shard {bad}: give K/N"):
            parse_shard(bad)
