"""The Triton model repository: config.pbtxt built from the metadata, versions that are never overwritten, and
exports that fail leaving the repository as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.export.layout import ModelMetadata, sha256_of, sha256_parameter
from simclr.export.repository import (
    ServingOptions,
    check_model_name,
    export_to_repository,
    run_model_name,
    triton_config,
)

from conftest import train_cli

SMALL = ["--width", "0.0625", "--image-size", "16", "--batch-size", "8", "--workers", "0", "--max-steps", "1"]
METADATA = ModelMetadata(image_size=24, embedding_dim=96, architecture="resnet18", width=0.5, stem="small",
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), recipe={"note": 'quotes " and \\ survive'})


def _export(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def _parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_config_text_parses_back_to_what_was_asked(tmp_path: Path) -> None:
    options = ServingOptions(max_batch_size=32, preferred_batch_sizes=(8, 64), max_queue_delay_microseconds=250,
                             instances=3)
    (tmp_path / "config.pbtxt").write_text(triton_config("m", METADATA, options, {"onnx_sha256_v1": "ab"}))
    config = _parse_config(tmp_path / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("m", "onnxruntime", 32)
    assert list(config.input[0].dims) == [24, 24, 3] and list(config.output[0].dims) == [96]
    assert list(config.dynamic_batching.preferred_batch_size) == [8]  # 64 is above max_batch_size
    assert config.dynamic_batching.max_queue_delay_microseconds == 250 and config.instance_group[0].count == 3
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters == {**METADATA.to_props(), "onnx_sha256_v1": "ab"}
    assert ModelMetadata.from_props(parameters, "config.pbtxt") == METADATA


def test_without_dynamic_batching_there_is_no_batching_block() -> None:
    text = triton_config("m", METADATA, ServingOptions(dynamic_batching=False), {})
    assert "dynamic_batching" not in text


@pytest.mark.parametrize("name", ["ok", "Model_2.v-1"])
def test_good_names_pass(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", ["", "bad name", "../up", "-dash", "x" * 200])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="--name"):
        check_model_name(name)


def test_repository_config_parses_and_agrees_with_the_onnx(tiny_repo: Path) -> None:
    config = _parse_config(tiny_repo / "tiny" / "config.pbtxt")
    assert config.name == "tiny" and config.backend == "onnxruntime" and config.max_batch_size == 8
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.instance_group[0].count == 1
    model = onnx.load(str(tiny_repo / "tiny" / "2" / "model.onnx"))
    graph_input, graph_output = model.graph.input[0], model.graph.output[0]
    assert config.input[0].name == graph_input.name and config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert list(config.input[0].dims) == [d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:]]
    assert config.output[0].name == graph_output.name and list(config.output[0].dims) == [64]
    for prop in model.metadata_props:
        if prop.key != "checkpoint_sha256":  # differs between the two versions; the config has the newest
            assert config.parameters[prop.key].string_value == prop.value
    for version in (1, 2):
        assert config.parameters[sha256_parameter(version)].string_value == \
            sha256_of(tiny_repo / "tiny" / str(version) / "model.onnx")


def test_new_export_adds_a_version_and_never_touches_old_ones(contract_run: Path, tmp_path: Path) -> None:
    first = export_to_repository(contract_run, tmp_path, "m")
    before = first.model_path.read_bytes()
    second = export_to_repository(contract_run, tmp_path, "m")
    assert (first.version, second.version) == (1, 2)
    assert first.model_path.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2", "config.pbtxt"]


def test_bad_input_is_one_line_and_leaves_the_repository_as_it_was(contract_run: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_to_repository(contract_run, repo, "kept")
    snapshot = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    cases = [
        ([str(tmp_path / "missing.pt")], "no such checkpoint"),
        ([str(junk)], "not a readable checkpoint"),
        ([str(contract_run), "--name", "bad name!"], "--name 'bad name!'"),
        ([str(contract_run), "--name", "../escape"], "--name '../escape'"),
    ]
    for args, message in cases:
        result = _export(*args, "--repo", str(repo))
        assert result.exit_code == 1, result.output
        assert message in result.output and result.output.count("\n") == 1
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == snapshot


def test_a_version_with_another_image_size_is_refused(contract_run: Path, image_folder: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_to_repository(contract_run, repo, "m", ServingOptions())
    other = train_cli("--data", str(image_folder), "--out", str(tmp_path / "run"), *SMALL)
    result = _export(str(other), "--repo", str(repo), "--name", "m")
    assert result.exit_code == 1 and "image_size" in result.output
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "config.pbtxt"]


def test_an_export_is_named_after_its_run_folder(contract_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "mydogs"
    run.mkdir(parents=True)
    shutil.copy(contract_run / "last.pt", run / "last.pt")
    repo = tmp_path / "repo"
    for source in (run, run / "last.pt"):
        result = _export(str(source), "--repo", str(repo), "--no-bytes-model", "--json")
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in repo.iterdir()) == ["mydogs"]
    assert sorted(p.name for p in (repo / "mydogs").iterdir()) == ["1", "2", "config.pbtxt"]


def test_a_run_folder_that_is_no_model_name_asks_for_name(contract_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "my dogs"
    run.mkdir()
    shutil.copy(contract_run / "last.pt", run / "last.pt")
    for extra in ([], ["--classifier"]):
        result = _export(str(run), "--repo", str(tmp_path / "repo"), *extra)
        assert result.exit_code == 1 and result.output.count("\n") == 1
        assert "the run folder's name 'my dogs' is not a model name" in result.output
        assert "name the model with --name" in result.output
    assert not (tmp_path / "repo").exists()


def test_the_default_name_is_the_folder_of_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "runs" / "mydogs.v2"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"")  # only found, not read
    monkeypatch.chdir(run)
    for source in (run, run / "last.pt", Path("."), Path("last.pt"), run / ".." / "mydogs.v2"):
        assert run_model_name(source) == "mydogs.v2"
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        run_model_name(tmp_path / "runs")
