"""The weighted kNN classifier against a NumPy loop of its definition (Wu et al. 2018)."""

from __future__ import annotations

import numpy as np
import pytest

from simclr.evaluate.knn import knn_class_scores, knn_top1


def _votes_by_loop(train: np.ndarray, labels: np.ndarray, test: np.ndarray, classes: int, k: int,
                   temperature: float) -> np.ndarray:
    """Each test row: its k most cosine-similar train rows vote exp(similarity / T) for their label."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    votes = np.zeros((len(test), classes))
    for row, query in enumerate(test / np.linalg.norm(test, axis=1, keepdims=True)):
        similarity = train @ query
        for neighbour in np.argsort(-similarity)[:k]:
            votes[row, labels[neighbour]] += np.exp(similarity[neighbour] / temperature)
    return votes


@pytest.mark.parametrize("k,temperature,chunk", [(1, 0.1, 1024), (5, 0.5, 3), (200, 0.1, 7)])
def test_votes_match_the_definition(k: int, temperature: float, chunk: int) -> None:
    rng = np.random.default_rng(k)
    train, test = rng.standard_normal((60, 8)), rng.standard_normal((20, 8))
    labels = rng.integers(0, 4, 60)
    scores = knn_class_scores(train, labels, test, 4, k, temperature, chunk_size=chunk).numpy()
    np.testing.assert_allclose(scores, _votes_by_loop(train, labels, test, 4, min(k, 60), temperature), rtol=1e-4)


def test_separated_clusters_are_classified_exactly_and_mislabelled_ones_are_not() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16) * 10
    train_labels, test_labels = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 10)
    train = centres[train_labels] + rng.standard_normal((90, 16))
    test = centres[test_labels] + rng.standard_normal((30, 16))
    assert knn_top1(train, train_labels, test, test_labels, 3, k=10) == 1.0
    assert knn_top1(train, (train_labels + 1) % 3, test, test_labels, 3, k=10) == 0.0


def test_features_and_labels_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="5 train features but 4 labels"):
        knn_class_scores(np.ones((5, 2)), np.zeros(4), np.ones((1, 2)), 2)
