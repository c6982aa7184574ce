import math

import numpy as np
import pytest
import torch

from simclr.train.loss import contrastive_accuracy, nt_xent


def nt_xent_by_pairs(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """The paper's Algorithm 1 as loops in float64: l(i, j) for every positive pair, both orders."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    count = len(z1)

    def pair_loss(i: int, j: int) -> float:
        numerator = math.exp(z[i] @ z[j] / temperature)
        denominator = sum(math.exp(z[i] @ z[k] / temperature) for k in range(2 * count) if k != i)
        return -math.log(numerator / denominator)

    return sum(pair_loss(k, k + count) + pair_loss(k + count, k) for k in range(count)) / (2 * count)


@pytest.mark.parametrize("count", [2, 5, 16])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_equals_the_per_pair_loop(count: int, temperature: float) -> None:
    rng = np.random.default_rng(count)
    z1, z2 = rng.standard_normal((count, 8)), rng.standard_normal((count, 8))
    value = nt_xent(torch.tensor(z1), torch.tensor(z2), temperature)
    assert value.item() == pytest.approx(nt_xent_by_pairs(z1, z2, temperature), rel=1e-5)


@pytest.mark.parametrize("count,temperature", [(3, 0.2), (8, 0.5)])
def test_nt_xent_gradients_equal_the_loop_gradients(count: int, temperature: float) -> None:
    rng = np.random.default_rng(7)
    z1, z2 = rng.standard_normal((count, 6)), rng.standard_normal((count, 6))
    t1 = torch.tensor(z1, dtype=torch.float32, requires_grad=True)
    t2 = torch.tensor(z2, dtype=torch.float32, requires_grad=True)
    nt_xent(t1, t2, temperature).backward()
    # Central differences of the float64 loop.
    step = 1e-6
    for tensor, array, which in ((t1, z1, 0), (t2, z2, 1)):
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            plus, minus = array.copy(), array.copy()
            plus[index] += step
            minus[index] -= step
            pair_plus = (plus, z2) if which == 0 else (z1, plus)
            pair_minus = (minus, z2) if which == 0 else (z1, minus)
            numeric[index] = (nt_xent_by_pairs(*pair_plus, temperature)
                              - nt_xent_by_pairs(*pair_minus, temperature)) / (2 * step)
        np.testing.assert_allclose(tensor.grad.numpy(), numeric, atol=2e-5, rtol=1e-3)


def test_nt_xent_is_symmetric_in_the_views() -> None:
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(nt_xent(z2, z1, 0.5).item(), rel=1e-6)


def test_contrastive_accuracy_counts_positives_ranked_first() -> None:
    z1 = torch.eye(4)
    assert contrastive_accuracy(z1, z1 + 0.01).item() == 1.0
    # Views of image 0 swapped with image 1: rows 0, 1, 4 and 5 now find the wrong partner first.
    z2 = torch.eye(4)[[1, 0, 2, 3]]
    assert contrastive_accuracy(z1, z2).item() == pytest.approx(0.5)


def test_nt_xent_rejects_mismatched_shapes_and_bad_temperature() -> None:
    with pytest.raises(ValueError, match="one shape"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3), 0.5)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(4, 3), torch.randn(4, 3), 0.0)
