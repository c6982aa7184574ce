"""A fine-tuned classifier exported, served and used: ONNX parity with PyTorch, Triton's classification extension
answering with class names (HTTP, gRPC, the bytes ensemble), and `simclr classify` here and on the server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc
import tritonclient.http
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.data.decode import decode_image
from simclr.data.images import find_images
from simclr.export.classifier import export_classifier, load_finetuned
from simclr.export.onnx_export import run_onnx
from simclr.finetune.model import UInt8Classifier

from conftest import COLOURS, serve

NAME = "colours"


@pytest.fixture(scope="module")
def classifier_repo(finetuned_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("classifier_repo")
    export_classifier(finetuned_run, repo, NAME)
    return repo


@pytest.fixture(scope="module")
def classifier_server(classifier_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    with serve(classifier_repo, tmp_path_factory) as server:
        yield server


def _test_images(labelled_folder: Path) -> tuple[list[Path], np.ndarray]:
    paths = find_images(labelled_folder / "test")
    return paths, np.stack([decode_image(path, 32) for path in paths])


def test_the_exported_classifier_equals_pytorch(finetuned_run: Path, classifier_repo: Path,
                                                labelled_folder: Path) -> None:
    _, images = _test_images(labelled_folder)
    run = load_finetuned(finetuned_run)
    with torch.no_grad():
        embedding, logits = UInt8Classifier(run.classifier)(torch.from_numpy(images))
    exported = run_onnx(classifier_repo / NAME / "1" / "model.onnx", images, ["embedding", "logits", "probabilities"])
    assert np.abs(exported["logits"] - logits.numpy()).max() <= 1e-4
    assert np.abs(exported["embedding"] - embedding.numpy()).max() <= 1e-4
    np.testing.assert_allclose(exported["probabilities"].sum(axis=1), 1, atol=1e-5)
    assert (classifier_repo / NAME / "labels.txt").read_text().split() == sorted(COLOURS)
    config = (classifier_repo / NAME / "config.pbtxt").read_text()
    assert config.count('label_filename: "labels.txt"') == 2


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_classification_extension_answers_with_class_names(classifier_repo: Path, classifier_server,
                                                                  labelled_folder: Path, protocol: str) -> None:
    _, images = _test_images(labelled_folder)
    probabilities = run_onnx(classifier_repo / NAME / "1" / "model.onnx", images, ["probabilities"])["probabilities"]
    module = tritonclient.grpc if protocol == "grpc" else tritonclient.http
    url = classifier_server.grpc_url if protocol == "grpc" else classifier_server.http_url
    client = module.InferenceServerClient(url)
    request = module.InferInput("image", list(images.shape), "UINT8")
    request.set_data_from_numpy(images)
    output = module.InferRequestedOutput("probabilities", class_count=2)
    answers = client.infer(NAME, [request], outputs=[output]).as_numpy("probabilities")
    client.close()
    classes = sorted(COLOURS)
    for row, answer in zip(probabilities, answers, strict=True):
        parsed = [entry.decode().split(":") for entry in answer]  # "score:index:label"
        expected = np.argsort(-row)[:2]
        assert [label for _, _, label in parsed] == [classes[i] for i in expected]
        assert [int(index) for _, index, _ in parsed] == expected.tolist()
        np.testing.assert_allclose([float(score) for score, _, _ in parsed], row[expected], rtol=1e-5)


def test_the_bytes_ensemble_classifies_image_files(classifier_server, labelled_folder: Path) -> None:
    paths, _ = _test_images(labelled_folder)
    client = tritonclient.http.InferenceServerClient(classifier_server.http_url)
    request = tritonclient.http.InferInput("image_bytes", [2, 1], "BYTES")
    request.set_data_from_numpy(np.array([[paths[0].read_bytes()], [paths[-1].read_bytes()]], dtype=object))
    output = tritonclient.http.InferRequestedOutput("probabilities", class_count=1)
    answers = client.infer(f"{NAME}_bytes", [request], outputs=[output]).as_numpy("probabilities")
    client.close()
    assert all(entry[0].decode().split(":")[2] in COLOURS for entry in answers)


def _classify(*args: str) -> dict:
    result = CliRunner().invoke(app, ["classify", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


@pytest.mark.parametrize("send", ["uint8", "bytes"])
def test_classify_here_and_on_the_server_agree(classifier_repo: Path, classifier_server, labelled_folder: Path,
                                               send: str) -> None:
    local = _classify(str(labelled_folder / "test"), "--model", str(classifier_repo / NAME), "-k", "3")
    served = _classify(str(labelled_folder / "test"), "--server", classifier_server.grpc_url, "--protocol", "grpc",
                       "--model-name", NAME, "--send", send, "-k", "3")
    assert len(local["images"]) == 18
    for mine, theirs in zip(local["images"], served["images"], strict=True):
        assert mine["path"] == theirs["path"]
        assert [top["class"] for top in mine["top"]] == [top["class"] for top in theirs["top"]]
        np.testing.assert_allclose([top["probability"] for top in mine["top"]],
                                   [top["probability"] for top in theirs["top"]], atol=1e-5)
    right = sum(entry["top"][0]["class"] == Path(entry["path"]).parent.name for entry in local["images"])
    assert right >= 12  # colours are easy: most of the 18 test pictures are classified right


def test_classify_json_reports_the_embedding_dim_and_the_number_of_classes(classifier_repo: Path, classifier_server,
                                                                           labelled_folder: Path) -> None:
    _, images = _test_images(labelled_folder)
    width = run_onnx(classifier_repo / NAME / "1" / "model.onnx", images[:1]).shape[1]
    local = _classify(str(labelled_folder / "test"), "--model", str(classifier_repo / NAME))
    served = _classify(str(labelled_folder / "test"), "--server", classifier_server.grpc_url, "--protocol", "grpc",
                       "--model-name", NAME)
    for answer in (local, served):
        assert answer["model"]["embedding_dim"] == width != len(COLOURS)
        assert answer["model"]["num_classes"] == len(COLOURS)


def test_classify_refuses_an_encoder_without_classes(tiny_repo: Path, labelled_folder: Path) -> None:
    result = CliRunner().invoke(app, ["classify", str(labelled_folder / "test"), "--model", str(tiny_repo / "tiny")])
    assert result.exit_code == 1 and "has no output 'probabilities'" in result.output
    assert result.output.count("\n") == 1


@pytest.mark.slow
def test_export_tells_a_finetuned_run_from_a_pretraining_run(contract_run: Path, finetuned_run: Path,
                                                             tmp_path: Path) -> None:
    encoder = CliRunner().invoke(app, ["export", str(finetuned_run), "--repo", str(tmp_path)])
    assert encoder.exit_code == 1 and "a fine-tuning run; export its classifier with --classifier" in encoder.output
    classifier = CliRunner().invoke(app, ["export", str(contract_run), "--classifier", "--repo", str(tmp_path)])
    assert classifier.exit_code == 1 and "not a fine-tuning run" in classifier.output
    assert not any(tmp_path.iterdir())
