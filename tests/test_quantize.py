"""simclr quantize: a real ONNX Runtime static quantization of the tiny encoder, its accuracy gate, its metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.data.images import find_images, load_image
from simclr.embed.encoder import same_model
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.export.layout import sha256_of


def _quantize(*args: str):
    return CliRunner().invoke(app, ["quantize", *args])


def test_int8_model_beside_the_fp32_one_keeps_the_contract(tiny_repo: Path, shapes_folder: Path,
                                                           tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "tiny" / "1").mkdir(parents=True)
    (repo / "tiny" / "1" / "model.onnx").write_bytes((tiny_repo / "tiny" / "1" / "model.onnx").read_bytes())
    result = _quantize(str(repo / "tiny"), "--calibration", str(shapes_folder), "--images", "64", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["name"] == "tiny_int8" and report["calibration_images"] == 64 and report["mean_cosine"] >= 0.99
    int8_file = repo / "tiny_int8" / "1" / "model.onnx"
    props = {p.key: p.value for p in onnx.load(str(int8_file)).metadata_props}
    assert props["precision"] == "int8" and props["quantized_from"] == sha256_of(repo / "tiny" / "1" / "model.onnx")
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(int8_file)).graph.node)
    fp32, int8 = OnnxEncoder(repo / "tiny"), OnnxEncoder(repo / "tiny_int8")
    assert not same_model(fp32.identity, int8.identity)  # search keeps their features apart
    images = np.stack([load_image(path, 32) for path in find_images(shapes_folder)[200:216]])
    a, b = fp32.embed(images), int8.embed(images)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert b.shape == a.shape and b.dtype == np.float32 and cosine.mean() >= 0.99


def test_the_accuracy_gate_refuses_and_writes_nothing(tiny_repo: Path, shapes_folder: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "tiny" / "1").mkdir(parents=True)
    (repo / "tiny" / "1" / "model.onnx").write_bytes((tiny_repo / "tiny" / "1" / "model.onnx").read_bytes())
    result = _quantize(str(repo / "tiny"), "--calibration", str(shapes_folder), "--images", "16", "--min-cosine",
                       "1.0")
    assert result.exit_code == 1 and "mean cosine similarity" in result.output
    assert "nothing was written" in result.output
    assert not (repo / "tiny_int8").exists()


def test_a_bare_onnx_a_file_that_is_not_onnx_and_too_few_images_are_one_line(tiny_repo: Path, shapes_folder: Path,
                                                                              tmp_path: Path) -> None:
    downloads = tmp_path / "Downloads"
    downloads.mkdir()
    bare = downloads / "model.onnx"
    bare.write_bytes((tiny_repo / "tiny" / "1" / "model.onnx").read_bytes())
    refused = _quantize(str(bare), "--calibration", str(shapes_folder))
    assert refused.exit_code == 1 and "not a model of a repository" in refused.output, refused.output
    assert not list(tmp_path.glob("*_int8"))
    repo = tmp_path / "repo"
    (repo / "junk" / "1").mkdir(parents=True)
    (repo / "junk" / "1" / "model.onnx").write_bytes(b"not a protobuf at all")
    refused = _quantize(str(repo / "junk"), "--calibration", str(shapes_folder))
    assert refused.exit_code == 1 and "not an ONNX model" in refused.output and refused.output.count("\n") == 1
    (repo / "tiny" / "1").mkdir(parents=True)
    (repo / "tiny" / "1" / "model.onnx").write_bytes((tiny_repo / "tiny" / "1" / "model.onnx").read_bytes())
    few = tmp_path / "few"
    few.mkdir()
    for path in find_images(shapes_folder)[:4]:
        (few / path.name).write_bytes(path.read_bytes())
    refused = _quantize(str(repo / "tiny"), "--calibration", str(few))
    assert refused.exit_code == 1 and "4 readable images; at least 16 are needed" in refused.output
    assert not (repo / "tiny_int8").exists()
