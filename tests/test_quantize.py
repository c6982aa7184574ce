"""simclr quantize: a real ONNX Runtime static quantization of the tiny encoder, its accuracy gate, its metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.data.images import find_images, load_image
from simclr.embed.encoder import same_model
from simclr.embed.onnx_encoder import OnnxEncoder
from simclr.export.layout import sha256_of
from simclr.export.quantize import neighbour_recall


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
    assert 0.0 <= report["recall_at_10"] <= 1.0
    for bar in ("decoding", "calibrating", "checking INT8 against FP32"):  # progress on stderr, none on stdout
        assert bar in result.stderr and bar not in result.stdout
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


def test_the_recipe_folds_batch_norm_and_keeps_the_first_conv_and_the_pooling_in_float(
        tiny_repo: Path, shapes_folder: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "tiny" / "1").mkdir(parents=True)
    (repo / "tiny" / "1" / "model.onnx").write_bytes((tiny_repo / "tiny" / "1" / "model.onnx").read_bytes())
    result = _quantize(str(repo / "tiny"), "--calibration", str(shapes_folder), "--images", "32")
    assert result.exit_code == 0, result.output
    assert "held-out images: mean cosine to FP32 0.9" in result.stdout and "recall@10 against FP32" in result.stdout
    graph = onnx.load(str(repo / "tiny_int8" / "1" / "model.onnx")).graph
    assert not any(node.op_type == "BatchNormalization" for node in graph.node)
    produced_by = {output: node for node in graph.node for output in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert convs[0].input[1] in {weights.name for weights in graph.initializer}  # float weights, read as they are
    assert all(produced_by[conv.input[1]].op_type == "DequantizeLinear" for conv in convs[1:])
    pooled = next(node for node in graph.node if node.op_type == "GlobalAveragePool").output[0]
    assert not any(node.op_type == "QuantizeLinear" and pooled in node.input for node in graph.node)


def _recall_by_loops(reference: np.ndarray, other: np.ndarray, queries: list[int], k: int) -> float:
    """neighbour_recall written out: sort every other row by cosine to the query, compare the first k."""
    def nearest(rows: np.ndarray, query: int) -> set[int]:
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        scores = [(float(unit[query] @ unit[row]), row) for row in range(len(rows)) if row != query]
        return {row for _, row in sorted(scores, reverse=True)[:k]}

    return float(np.mean([len(nearest(reference, q) & nearest(other, q)) / k for q in queries]))


def test_neighbour_recall_matches_its_definition() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(60, 16)).astype(np.float32)
    queries = np.arange(40, 60)
    assert neighbour_recall(reference, 3 * reference, queries) == 1.0  # a scale changes no cosine
    for noise in (0.1, 0.5, 2.0):
        other = reference + rng.normal(scale=noise, size=reference.shape).astype(np.float32)
        assert neighbour_recall(reference, other, queries) == pytest.approx(
            _recall_by_loops(reference, other, list(queries), 10))
    unrelated = rng.normal(size=reference.shape).astype(np.float32)
    assert neighbour_recall(reference, unrelated, queries) < 0.5
    assert neighbour_recall(reference[:5], reference[:5] + 1, np.arange(5)) == 1.0  # k = 4: every other row


def test_the_accuracy_gate_refuses_and_writes_nothing(tiny_repo: Path, shapes_folder: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "tiny" / "1").mkdir(parents=True)
    (repo / "tiny" / "1" / "model.onnx").write_bytes((tiny_repo / "tiny" / "1" / "model.onnx").read_bytes())
    result = _quantize(str(repo / "tiny"), "--calibration", str(shapes_folder), "--images", "16", "--min-cosine",
                       "1.0")
    assert result.exit_code == 1 and "mean cosine similarity" in result.output and "recall@10" in result.output
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
