"""simclr probe: the linear probe and kNN on synthetic and real features, its JSON, determinism and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from simclr.cli.app import app
from simclr.data.datasets import torchvision_split
from simclr.embed.torch_encoder import TorchEncoder
from simclr.evaluate.linear import fit_logistic_regression, linear_probe, rising_edge, topk_accuracy
from simclr.evaluate.probe import confusion_matrix, evaluate_features
from simclr.train.config import ModelConfig


def _blobs(count: int, classes: int, dim: int, seed: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * 3
    labels = rng.integers(0, classes, count)
    return (centres[labels] + spread * rng.standard_normal((count, dim))).astype(np.float32), labels


def test_separable_features_give_about_100_percent_and_shuffled_labels_chance() -> None:
    train_x, train_y = _blobs(2000, 10, 32, 0, 0.5)
    test_x, test_y = _blobs(1000, 10, 32, 0, 0.5)
    # Same seed: the same centres; fresh noise comes from the different count.
    report = evaluate_features(train_x, train_y, test_x, test_y, 10)
    assert report.linear_top1 > 0.99 and report.knn_top1 > 0.99 and report.linear_top5 == 1.0
    shuffled = np.random.default_rng(1).permutation(train_y)
    assert 0.03 < evaluate_features(train_x, shuffled, test_x, test_y, 10).linear_top1 < 0.2
    # kNN on shuffled labels of clustered data votes one arbitrary label per cluster (0% or 100% a cluster), so
    # its chance level is checked on features without structure.
    rng = np.random.default_rng(2)
    noise = evaluate_features(rng.standard_normal((2000, 32)), rng.integers(0, 10, 2000),
                              rng.standard_normal((1000, 32)), rng.integers(0, 10, 1000), 10)
    assert 0.05 < noise.linear_top1 < 0.16 and 0.05 < noise.knn_top1 < 0.16


def test_l2_is_chosen_on_held_out_train_and_the_fit_matches_its_objective() -> None:
    x, y = _blobs(600, 3, 8, 2, 3.0)
    result = linear_probe(x[:400], y[:400], x[400:], y[400:], 3, l2_grid=(1e-4, 1e-2, 10.0))
    assert set(result.validation_top1) == {1e-4, 1e-2, 10.0} and result.l2 in result.validation_top1
    assert result.validation_top1[result.l2] == max(result.validation_top1.values())
    classifier = fit_logistic_regression(x, y, 3, l2=1e-2)
    # At the optimum the gradient of mean CE + l2/2 |W|^2 vanishes.
    weight = classifier.weight.clone().requires_grad_(True)
    standardised = (torch.as_tensor(x) - classifier.mean) / classifier.std
    loss = torch.nn.functional.cross_entropy(standardised @ weight.T + classifier.bias, torch.as_tensor(y)) + \
        0.5 * 1e-2 * weight.pow(2).sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-4


def _few_per_class() -> tuple[np.ndarray, np.ndarray]:
    """20 classes of 10 to 40 rows in 128 dimensions, centres close together: like a small folder of photos of
    many breeds, where strong regularisation pays (validation top-1, measured: 31% at L2 1e-3, 35% at 1e-2, 40% at
    0.1, 31% at 1), and the largest strengths fall back on the commonest classes."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(20), rng.integers(10, 41, 20))
    centres = 0.2 * rng.standard_normal((20, 128))
    return (centres[labels] + rng.standard_normal((len(labels), 128))).astype(np.float32), labels


def test_the_default_l2_grid_widens_past_an_edge_where_validation_still_rises() -> None:
    x, y = _few_per_class()
    widened = linear_probe(x, y, x, y, 20, max_iter=100)
    assert list(widened.validation_top1) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0]  # 1: worse, so it stops
    assert widened.l2 == pytest.approx(0.1) and widened.validation_top1[0.1] > widened.validation_top1[1e-2]
    assert "widened past 0.01, where validation top-1 was still rising, to 0.1, 1; chose 0.1" in widened.l2_note
    given = linear_probe(x, y, x, y, 20, l2_grid=(1e-3, 1e-2), max_iter=100)  # a grid given is searched as it is
    assert list(given.validation_top1) == [1e-3, 1e-2] and given.l2 == 1e-2
    assert "is at the edge of the --l2 given" in given.l2_note and "add --l2 0.1" in given.l2_note


def test_the_grid_widens_only_while_its_edge_beats_the_strength_inside() -> None:
    assert rising_edge({1e-3: 0.30, 1e-2: 0.35}) == pytest.approx(0.1)
    assert rising_edge({1e-6: 0.40, 1e-5: 0.35, 1e-4: 0.30}) == pytest.approx(1e-7)
    assert rising_edge({1e-2: 0.35, 0.1: 0.35}) is None  # a plateau: the ties go to the stronger, and it stops
    assert rising_edge({1e-3: 0.30, 1e-2: 0.40, 0.1: 0.35}) is None  # inside
    assert rising_edge({0.0: 0.40, 1e-2: 0.30}) is None and rising_edge({1e-2: 0.4}) is None


def test_cli_says_how_the_l2_grid_was_widened_or_falls_short(tmp_path: Path) -> None:
    from simclr.embed.encoder import ModelIdentity
    from simclr.embed.sidecar import FeaturesHeader
    from simclr.embed.writer import FeatureWriter

    x, y = _few_per_class()
    features = tmp_path / "photos.npy"
    header = FeaturesHeader(model=ModelIdentity("synthetic", "1", "", 64, 128), model_source="",
                            inputs=("photos",), cwd=str(tmp_path), normalized=False, images=len(x))
    with FeatureWriter(features, 128, header, resume=False) as writer:
        writer.write([f"photos/breed{label}/{row}.jpg" for row, label in enumerate(y)],
                     [f"breed{label:02d}" for label in y], x, [None] * len(x))
        writer.finish()
    both = ["--train-features", str(features), "--test-features", str(features)]
    widened = _probe(*both)
    assert widened.exit_code == 0, widened.output
    assert "(L2 0.1;" in widened.stdout and "note: the default L2 grid was widened past 0.01" in widened.stdout
    given = _probe(*both, "--l2", "0.001", "--l2", "0.01", "--json")
    report = json.loads(given.stdout)
    assert report["l2_tried"] == [0.001, 0.01] and report["l2"] == 0.01 and "add --l2 0.1" in report["l2_note"]
    assert f"warning: {report['l2_note']}" in given.stderr


def test_topk_and_confusion() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05]])
    assert topk_accuracy(scores, [1, 1], 1) == 0.5 and topk_accuracy(scores, [1, 1], 2) == 1.0
    assert confusion_matrix([0, 0, 1], [0, 1, 1], 2).tolist() == [[1, 1], [0, 1]]


def _pixels(images: torch.Tensor, side: int) -> np.ndarray:
    """Images average-pooled to side x side x 3, flattened."""
    return torch.nn.functional.avg_pool2d(images.float(), 32 // side).flatten(1).numpy()


@pytest.fixture(scope="module")
def cifar_splits(cifar_root: Path):
    return torchvision_split("cifar10", cifar_root, train=True), torchvision_split("cifar10", cifar_root, train=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.slow
def test_on_real_cifar_features_are_informative_and_ranked(cifar_splits, seed: int) -> None:
    # Measured on 2,000 train / 500 test images over seeds 0-2: random-weights ResNet-18 (width 0.25) 29-33%,
    # 8x8 pixels 35-38%, 2x2 pixels 27-28% linear top-1 (chance 10%). Random ResNet features do not reliably beat
    # 8x8 pixels at this size, so the clearly-better/clearly-worse pair is 8x8 against 2x2 pixels.
    train, test = cifar_splits[0].subset(2000, seed), cifar_splits[1].subset(500, seed)
    encoder = TorchEncoder.random(ModelConfig(width=0.25), 32, seed=seed)

    def embedded(split) -> np.ndarray:
        return encoder.embed(split.images.permute(0, 2, 3, 1).contiguous().numpy())

    grid = (1e-4, 1e-2)
    resnet = evaluate_features(embedded(train), train.labels, embedded(test), test.labels, 10, grid, seed=seed)
    assert 0.2 < resnet.linear_top1 < 0.6 and 0.15 < resnet.knn_top1 < 0.6, resnet
    finer, coarser = (evaluate_features(_pixels(train.images, side), train.labels, _pixels(test.images, side),
                                        test.labels, 10, grid, seed=seed) for side in (8, 2))
    assert finer.linear_top1 > coarser.linear_top1 + 0.04, (finer.linear_top1, coarser.linear_top1)


def _probe(*args: str):
    return CliRunner().invoke(app, ["probe", *args])


@pytest.mark.slow
def test_cli_on_cifar_reports_consistent_json_deterministically(cifar_root: Path, learned_repo: Path,
                                                                tmp_path: Path) -> None:
    args = ["--data", "cifar10", "--data-root", str(cifar_root), "--model", str(learned_repo / "tiny" / "1"),
            "--limit-train", "1000", "--limit-test", "300", "--l2", "1e-4", "--l2", "1e-2", "--json"]
    first = _probe(*args, "--confusion", str(tmp_path / "confusion.png"))
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    # Measured: 33% linear, 87% top-5, 26% kNN (chance 10%).
    assert report["linear_top5"] >= report["linear_top1"] > 0.15 and report["knn_top1"] > 0.15
    assert report["n_train"] == 1000 and report["n_test"] == 300 and len(report["classes"]) == 10
    assert report["model"]["name"] == "tiny" and report["l2"] in [float(k) for k in report["validation_top1"]]
    assert Image.open(tmp_path / "confusion.png").size[0] > 300
    again = json.loads(_probe(*args).stdout)
    assert {k: again[k] for k in ("linear_top1", "linear_top5", "knn_top1", "l2")} == \
        {k: report[k] for k in ("linear_top1", "linear_top5", "knn_top1", "l2")}


@pytest.mark.slow
def test_cli_baselines(cifar_root: Path, learned_repo: Path) -> None:
    common = ["--data", "cifar10", "--data-root", str(cifar_root), "--model", str(learned_repo / "tiny" / "1"),
              "--limit-train", "500", "--limit-test", "200", "--json", "--l2", "1e-3"]
    random = json.loads(_probe(*common, "--baseline", "random").stdout)
    pixels = json.loads(_probe(*common, "--baseline", "pixels").stdout)
    assert random["baseline"] == "random" and random["model"]["name"].startswith("random-resnet18")
    assert pixels["model"]["embedding_dim"] == 32 * 32 * 3 and pixels["l2"] == 1e-3
    # Both baselines carry information (measured: random 22% linear / 20% kNN, pixels 24% / 23%; chance 10%).
    for report in (random, pixels):
        assert report["linear_top1"] > 0.15 and report["knn_top1"] > 0.13, report


@pytest.mark.slow
def test_image_folders_with_mismatched_classes_and_precomputed_features(cifar_folders: Path, learned_repo: Path,
                                                                        tmp_path: Path) -> None:
    train, test = tmp_path / "train", tmp_path / "test"
    for split, source, classes in ((train, "train", ("cat", "dog", "ship")), (test, "test", ("cat", "dog", "frog"))):
        for name in classes:
            (split / name).mkdir(parents=True)
            for path in sorted((cifar_folders / source / name).glob("*.jpg"))[:30]:
                (split / name / path.name).write_bytes(path.read_bytes())
    (train / "empty").mkdir()
    model = str(learned_repo / "tiny" / "1")
    result = _probe("--train", str(train), "--test", str(test), "--model", model, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["classes"] == ["cat", "dog", "ship"] and report["n_train"] == 90 and report["n_test"] == 60
    assert "class empty" in result.output and "frog" in result.output  # warnings on stderr
    for split in (train, test):
        embedded = CliRunner().invoke(app, ["embed", str(split), "--model", model, "--out", str(split) + ".npy"])
        assert embedded.exit_code == 0, embedded.output
    from_files = json.loads(_probe("--train-features", f"{train}.npy", "--test-features", f"{test}.npy",
                                   "--json").stdout)
    assert from_files["n_train"] == 90 and from_files["n_test"] == 60
    assert from_files["linear_top1"] == pytest.approx(report["linear_top1"], abs=0.02)


@pytest.mark.slow
def test_a_checkpoint_probed_at_another_size_matches_its_export_at_that_size(cifar_folders: Path, tiny_run: Path,
                                                                              tmp_path: Path) -> None:
    from simclr.export.repository import export_to_repository

    export_to_repository(tiny_run, tmp_path / "repo", "at48", image_size=48)
    split = ["--train", str(cifar_folders / "train"), "--test", str(cifar_folders / "test"), "--limit-train", "400",
             "--limit-test", "200", "--json"]
    torch_report = json.loads(_probe(*split, "--checkpoint", str(tiny_run), "--image-size", "48").stdout)
    onnx_report = json.loads(_probe(*split, "--model", str(tmp_path / "repo" / "at48")).stdout)
    assert torch_report["model"]["image_size"] == onnx_report["model"]["image_size"] == 48
    assert torch_report["knn_top1"] == pytest.approx(onnx_report["knn_top1"], abs=0.02)
    refused = _probe(*split, "--model", str(tmp_path / "repo" / "at48"), "--image-size", "64")
    assert refused.exit_code == 1 and "--image-size 64: only with --checkpoint" in refused.output


@pytest.mark.parametrize("args,message", [
    ([], "give one labelled source"),
    (["--data", "mnist", "--data-root", "x"], "--data 'mnist'"),
    (["--train", "only-train"], "--train and --test go together"),
    (["--train-features", "a.npy"], "go together"),
])
def test_bad_input_is_one_line(args: list[str], message: str, tiny_repo: Path) -> None:
    result = _probe(*args, "--model", str(tiny_repo / "tiny"))
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1
