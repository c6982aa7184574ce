"""simclr export: ONNX parity and metadata, the Triton repository layout, versions, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.export.layout import sha256_of, sha256_parameter
from simclr.export.onnx_export import export_onnx, run_onnx
from simclr.export.repository import ServingOptions, export_to_repository
from simclr.train.checkpoint import load_encoder
from simclr.train.model import UInt8Encoder

from conftest import train_cli

SMALL = ["--width", "0.0625", "--image-size", "16", "--batch-size", "8", "--workers", "0", "--max-steps", "1"]


def _export(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def _parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_onnx_matches_pytorch_on_uint8_batches_of_any_size(tiny_run: Path, tmp_path: Path) -> None:
    exported = export_onnx(tiny_run, tmp_path / "model.onnx")
    assert exported.max_abs_diff <= 1e-4
    encoder, _ = load_encoder(tiny_run / "last.pt")
    for batch in (1, 5):
        images = np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        with torch.no_grad():
            expected = UInt8Encoder(encoder)(torch.from_numpy(images)).numpy()
        actual = run_onnx(tmp_path / "model.onnx", images)
        assert actual.shape == (batch, 64) and actual.dtype == np.float32
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_onnx_graph_contract_and_metadata(tiny_run: Path, tmp_path: Path) -> None:
    export_onnx(tiny_run, tmp_path / "model.onnx")
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert model.opset_import[0].version == 17
    (image,), (embedding,) = model.graph.input, model.graph.output
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value or d.dim_param for d in image.type.tensor_type.shape.dim] == ["batch", 32, 32, 3]
    assert embedding.name == "embedding" and embedding.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    props = {p.key: p.value for p in model.metadata_props}
    assert props["image_size"] == "32" and props["embedding_dim"] == "64" and props["architecture"] == "resnet18"
    assert props["checkpoint_sha256"] == sha256_of(tiny_run / "last.pt")
    assert '"temperature": 0.5' in props["recipe"] and props["mean"].startswith("[0.4914")


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


def test_new_export_adds_a_version_and_never_touches_old_ones(tiny_run: Path, tmp_path: Path) -> None:
    first = export_to_repository(tiny_run, tmp_path, "m")
    before = first.model_path.read_bytes()
    second = export_to_repository(tiny_run, tmp_path, "m")
    assert (first.version, second.version) == (1, 2)
    assert first.model_path.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2", "config.pbtxt"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_every_architecture_exports_with_parity(arch: str, image_folder: Path, tmp_path: Path) -> None:
    run = train_cli("--data", str(image_folder), "--out", str(tmp_path / "run"), *SMALL, "--arch", arch)
    result = _export(str(run), "--repo", str(tmp_path / "repo"), "--name", arch, "--json")
    assert result.exit_code == 0, result.output
    assert '"max_abs_diff"' in result.output
    config = _parse_config(tmp_path / "repo" / arch / "config.pbtxt")
    assert list(config.input[0].dims) == [16, 16, 3]
    assert config.output[0].dims[0] == (128 if arch == "resnet50" else 32)


def test_fp16_export_meets_its_stated_tolerance(tiny_run: Path, tmp_path: Path) -> None:
    exported = export_onnx(tiny_run, tmp_path / "half.onnx", fp16=True)
    assert exported.metadata.precision == "fp16"
    assert exported.max_abs_diff <= exported.tolerance
    assert run_onnx(tmp_path / "half.onnx", np.zeros((2, 32, 32, 3), np.uint8)).dtype == np.float32


def test_bad_input_is_one_line_and_leaves_the_repository_as_it_was(tiny_run: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_to_repository(tiny_run, repo, "kept")
    snapshot = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    cases = [
        ([str(tmp_path / "missing.pt")], "no such checkpoint"),
        ([str(junk)], "not a readable checkpoint"),
        ([str(tiny_run), "--name", "bad name!"], "--name 'bad name!'"),
        ([str(tiny_run), "--name", "../escape"], "--name '../escape'"),
    ]
    for args, message in cases:
        result = _export(*args, "--repo", str(repo))
        assert result.exit_code == 1, result.output
        assert message in result.output and result.output.count("\n") == 1
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == snapshot


def test_a_version_with_another_image_size_is_refused(tiny_run: Path, image_folder: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_to_repository(tiny_run, repo, "m", ServingOptions())
    other = train_cli("--data", str(image_folder), "--out", str(tmp_path / "run"), *SMALL)
    result = _export(str(other), "--repo", str(repo), "--name", "m")
    assert result.exit_code == 1 and "image_size" in result.output
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "config.pbtxt"]


def test_fp16_weights_halve_the_file_keep_fp32_compute_and_parity(tiny_run: Path, tmp_path: Path) -> None:
    full = export_onnx(tiny_run, tmp_path / "fp32.onnx")
    half = export_onnx(tiny_run, tmp_path / "fp16.onnx", weights="fp16")
    assert half.metadata.weights == "fp16" and full.metadata.weights == "fp32"
    assert half.max_abs_diff <= half.tolerance
    assert (tmp_path / "fp16.onnx").stat().st_size < 0.6 * (tmp_path / "fp32.onnx").stat().st_size
    graph = onnx.load(str(tmp_path / "fp16.onnx")).graph
    large = {init.data_type for init in graph.initializer if np.prod(init.dims) >= 1024}
    small = {init.data_type for init in graph.initializer if np.prod(init.dims) < 1024}
    assert large == {onnx.TensorProto.FLOAT16} and small == {onnx.TensorProto.FLOAT}  # norms, biases, mean/std
    casts = [node for node in graph.node if node.op_type == "Cast" and node.input[0].endswith(".fp16")]
    assert len(casts) == sum(np.prod(init.dims) >= 1024 for init in graph.initializer)
    assert {node.attribute[0].i for node in casts} == {onnx.TensorProto.FLOAT}
    images = np.random.default_rng(3).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    reference = run_onnx(tmp_path / "fp32.onnx", images)
    np.testing.assert_allclose(run_onnx(tmp_path / "fp16.onnx", images), reference,
                               atol=1e-3 * float(np.abs(reference).max()), rtol=0)


def test_batch_norm_is_exported_unfolded_under_the_checkpoint_names(tiny_run: Path, tmp_path: Path) -> None:
    export_onnx(tiny_run, tmp_path / "model.onnx")
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    encoder, _ = load_encoder(tiny_run / "last.pt")
    batch_norms = sum(isinstance(module, torch.nn.BatchNorm2d) for module in encoder.modules())
    assert sum(node.op_type == "BatchNormalization" for node in graph.node) == batch_norms
    names = {init.name for init in graph.initializer}
    assert {f"encoder.{key}" for key in encoder.state_dict() if not key.endswith("num_batches_tracked")} <= names
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert props["stem"] == "cifar" and props["cifar_stem"] == "true"


def test_unknown_weight_precision_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    result = _export(str(tiny_run), "--repo", str(tmp_path / "repo"), "--weights", "int4")
    assert result.exit_code == 1 and "--weights 'int4'" in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "repo" / "simclr_resnet18").exists()
