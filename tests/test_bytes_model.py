"""The models export writes for clients that send image files: NAME_preprocess (a copy of the decode code) and the
ensemble NAME_bytes, following NAME's versions; the shipped repository holds them as export writes them now."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.embed.onnx_encoder import DEFAULT_MODEL
from simclr.export.bytes_model import BytesModelOptions, preprocess_files, write_bytes_models
from simclr.export.layout import read_config


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_export_writes_the_preprocessing_model_and_the_ensemble_for_the_new_version(tiny_repo: Path) -> None:
    preprocess = read_config(tiny_repo / "tiny_preprocess")
    assert preprocess.backend == "python" and preprocess.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in preprocess.input] == [("image_bytes", 13, [1])]  # STRING
    assert [(t.name, t.data_type, list(t.dims)) for t in preprocess.output] == [("image", 2, [32, 32, 3])]  # UINT8
    assert preprocess.parameters["max_image_bytes"].string_value == "20000000"
    assert preprocess.version_policy.latest.num_versions == 1
    for version in ("1", "2"):  # versions follow tiny's; each holds today's decode code
        assert _files(tiny_repo / "tiny_preprocess" / version) == preprocess_files()
    ensemble = read_config(tiny_repo / "tiny_bytes")
    assert ensemble.platform == "ensemble" and ensemble.version_policy.latest.num_versions == 1
    assert [(step.model_name, step.model_version) for step in ensemble.ensemble_scheduling.step] == \
        [("tiny_preprocess", 2), ("tiny", 2)]
    assert [(t.name, list(t.dims)) for t in ensemble.output] == [("embedding", [64])]
    assert sorted(path.name for path in (tiny_repo / "tiny_bytes").iterdir()) == ["1", "2", "config.pbtxt"]


def test_the_shipped_copy_of_the_decode_code_is_what_export_writes_now(tmp_path: Path) -> None:
    shipped = DEFAULT_MODEL.parent
    name = DEFAULT_MODEL.name
    served = read_config(shipped / f"{name}_preprocess")
    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_MODEL, repo / name, ignore=shutil.ignore_patterns("*.onnx"))
    write_bytes_models(repo, name, BytesModelOptions(
        max_image_bytes=int(served.parameters["max_image_bytes"].string_value),
        max_pixels=int(served.parameters["max_pixels"].string_value),
        instances=served.instance_group[0].count))
    for model in (f"{name}_preprocess", f"{name}_bytes"):
        assert _files(shipped / model) == _files(repo / model), f"run: simclr export model_repository/{name}"


def test_export_options_for_the_bytes_model(contract_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    plain = runner.invoke(app, ["export", str(contract_run), "--repo", str(tmp_path), "--name", "m",
                                "--no-bytes-model"])
    assert plain.exit_code == 0, plain.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m"]
    added = runner.invoke(app, ["export", str(tmp_path / "m"), "--max-image-bytes", "5000",
                                "--preprocess-instances", "3"])
    assert added.exit_code == 0, added.output
    assert "wrote m_preprocess and m_bytes for m version 1" in added.stdout
    config = read_config(tmp_path / "m_preprocess")
    assert config.parameters["max_image_bytes"].string_value == "5000" and config.instance_group[0].count == 3
    nothing = runner.invoke(app, ["export", str(tmp_path / "m"), "--no-bytes-model"])
    assert nothing.exit_code == 1 and "nothing to write" in nothing.output


def test_a_folder_without_an_exported_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no exported model"):
        write_bytes_models(tmp_path, "empty")
    with pytest.raises(ValueError, match="--max-image-bytes 0"):
        write_bytes_models(tmp_path, "empty", BytesModelOptions(max_image_bytes=0))
