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
from simclr.export.layout import ModelMetadata, sha256_of
from simclr.export.onnx_export import export_onnx, run_onnx
from simclr.train.checkpoint import load_encoder
from simclr.train.model import UInt8Encoder

from conftest import train_cli

SMALL = ["--width", "0.0625", "--image-size", "16", "--batch-size", "8", "--workers", "0", "--max-steps", "1"]


def _export(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def _parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_onnx_matches_pytorch_on_uint8_batches_of_any_size(contract_run: Path, tmp_path: Path) -> None:
    exported = export_onnx(contract_run, tmp_path / "model.onnx")
    assert exported.max_abs_diff <= 1e-4
    encoder, _ = load_encoder(contract_run / "last.pt")
    for batch in (1, 5):
        images = np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        with torch.no_grad():
            expected = UInt8Encoder(encoder)(torch.from_numpy(images)).numpy()
        actual = run_onnx(tmp_path / "model.onnx", images)
        assert actual.shape == (batch, 64) and actual.dtype == np.float32
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_onnx_graph_contract_and_metadata(contract_run: Path, tmp_path: Path) -> None:
    export_onnx(contract_run, tmp_path / "model.onnx")
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert model.opset_import[0].version == 17
    (image,), (embedding,) = model.graph.input, model.graph.output
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value or d.dim_param for d in image.type.tensor_type.shape.dim] == ["batch", 32, 32, 3]
    assert embedding.name == "embedding" and embedding.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    props = {p.key: p.value for p in model.metadata_props}
    assert props["image_size"] == "32" and props["embedding_dim"] == "64" and props["architecture"] == "resnet18"
    assert props["checkpoint_sha256"] == sha256_of(contract_run / "last.pt")
    assert '"temperature": 0.5' in props["recipe"] and props["mean"].startswith("[0.4914")


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_every_architecture_exports_with_parity(arch: str, image_folder: Path, tmp_path: Path) -> None:
    run = train_cli("--data", str(image_folder), "--out", str(tmp_path / "run"), *SMALL, "--arch", arch)
    result = _export(str(run), "--repo", str(tmp_path / "repo"), "--name", arch, "--json")
    assert result.exit_code == 0, result.output
    assert '"max_abs_diff"' in result.output
    config = _parse_config(tmp_path / "repo" / arch / "config.pbtxt")
    assert list(config.input[0].dims) == [16, 16, 3]
    assert config.output[0].dims[0] == (128 if arch == "resnet50" else 32)


def test_fp16_export_meets_its_stated_tolerance(contract_run: Path, tmp_path: Path) -> None:
    exported = export_onnx(contract_run, tmp_path / "half.onnx", fp16=True)
    assert exported.metadata.precision == "fp16"
    assert exported.max_abs_diff <= exported.tolerance
    assert run_onnx(tmp_path / "half.onnx", np.zeros((2, 32, 32, 3), np.uint8)).dtype == np.float32


def test_fp16_weights_halve_the_file_keep_fp32_compute_and_parity(contract_run: Path, tmp_path: Path) -> None:
    full = export_onnx(contract_run, tmp_path / "fp32.onnx")
    half = export_onnx(contract_run, tmp_path / "fp16.onnx", weights="fp16")
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


def test_batch_norm_is_exported_unfolded_under_the_checkpoint_names(contract_run: Path, tmp_path: Path) -> None:
    export_onnx(contract_run, tmp_path / "model.onnx")
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    encoder, _ = load_encoder(contract_run / "last.pt")
    batch_norms = sum(isinstance(module, torch.nn.BatchNorm2d) for module in encoder.modules())
    assert sum(node.op_type == "BatchNormalization" for node in graph.node) == batch_norms
    names = {init.name for init in graph.initializer}
    assert {f"encoder.{key}" for key in encoder.state_dict() if not key.endswith("num_batches_tracked")} <= names
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert props["stem"] == "cifar" and props["cifar_stem"] == "true"


def test_unknown_weight_precision_is_refused_by_the_parser(contract_run: Path, tmp_path: Path) -> None:
    result = _export(str(contract_run), "--repo", str(tmp_path / "repo"), "--weights", "int4")
    assert result.exit_code == 2 and "'--weights'" in result.output and "'fp32', 'fp16'" in result.output
    assert not (tmp_path / "repo").exists()
    with pytest.raises(ValueError, match="--weights 'int4': choose one of fp32, fp16"):
        export_onnx(contract_run, tmp_path / "model.onnx", weights="int4")


def test_an_exported_model_re_exports_at_a_larger_size(contract_run: Path, tiny_repo: Path, tmp_path: Path) -> None:
    source = tiny_repo / "tiny" / "1" / "model.onnx"  # contract_run, exported at 32 px
    result = _export(str(source.parent), "--image-size", "48", "--name", "tiny48", "--repo", str(tmp_path / "repo"),
                     "--no-bytes-model", "--json")
    assert result.exit_code == 0, result.output
    new_model = tmp_path / "repo" / "tiny48" / "1" / "model.onnx"
    encoder, _ = load_encoder(contract_run / "last.pt")
    images = np.random.default_rng(7).integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = UInt8Encoder(encoder)(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(run_onnx(new_model, images), expected, atol=1e-4, rtol=0)

    served, old = ({p.key: p.value for p in onnx.load(str(path)).metadata_props} for path in (new_model, source))
    assert (served["image_size"], served["train_image_size"], old["train_image_size"]) == ("48", "32", "32")
    assert served["recipe"] == old["recipe"] and served["checkpoint_sha256"] == old["checkpoint_sha256"]
    assert served["exported_from"] == sha256_of(source)
    assert list(_parse_config(tmp_path / "repo" / "tiny48" / "config.pbtxt").input[0].dims) == [48, 48, 3]
    again = export_onnx(new_model, tmp_path / "again.onnx", weights="fp16", image_size=40)  # a re-export's re-export
    assert (again.metadata.image_size, again.metadata.train_image_size, again.metadata.weights) == (40, 32, "fp16")


def test_a_model_from_before_train_image_size_was_trained_at_its_image_size() -> None:
    metadata = ModelMetadata(image_size=64, embedding_dim=512, architecture="resnet18", width=1.0, stem="small",
                             mean=(0.5,) * 3, std=(0.25,) * 3)
    props = metadata.to_props()
    assert props["train_image_size"] == "64" and "exported_from" not in props
    del props["train_image_size"]
    assert ModelMetadata.from_props(props, "old.onnx") == metadata


@pytest.mark.parametrize(("size", "message"), [("0", "--image-size 0: choose 8 to 1024 pixels"),
                                               ("4096", "--image-size 4096: choose 8 to 1024 pixels")])
def test_a_bad_image_size_is_one_line(size: str, message: str, contract_run: Path, tmp_path: Path) -> None:
    result = _export(str(contract_run), "--repo", str(tmp_path / "repo"), "--image-size", size)
    assert result.exit_code == 1, result.output
    assert message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "repo").exists()


def test_a_re_export_without_a_name_is_one_line(tiny_repo: Path, tmp_path: Path) -> None:
    result = _export(str(tiny_repo / "tiny" / "2"), "--image-size", "48", "--repo", str(tmp_path / "repo"))
    assert result.exit_code == 1 and "name its re-export with --name" in result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "repo").exists()
