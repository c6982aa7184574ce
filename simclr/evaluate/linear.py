"""The linear evaluation protocol: multinomial logistic regression on frozen, standardised features.

Full-batch L-BFGS in torch (CPU or GPU); the L2 strength is picked from a grid on a held-out part of train, then
the classifier is refit on all of train. The default grid widens by 10x past an edge (at most WIDENINGS times) while
the best strength sits there with validation accuracy still rising; a grid given is searched as it is. Deterministic
for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
WIDENINGS = 4  # steps of 10x past an edge of the default grid, at most: up to 1e2, down to 1e-10


@dataclass(frozen=True)
class LinearClassifier:
    weight: torch.Tensor  # [C, D]
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [D], the standardisation learnt on train
    std: torch.Tensor  # [D]

    def scores(self, features) -> torch.Tensor:
        """Class scores [N, C] of raw (unstandardised) features [N, D]."""
        x = (torch.as_tensor(features, dtype=torch.float32, device=self.weight.device) - self.mean) / self.std
        return x @ self.weight.T + self.bias


@dataclass(frozen=True)
class ProbeResult:
    top1: float
    top5: float
    l2: float
    validation_top1: dict[float, float]  # per L2 strength tried (ascending) on the held-out part of train
    predictions: np.ndarray  # [N_test] predicted classes
    l2_note: str = ""  # the default grid was widened, or the best of a grid given is at its edge


def fit_logistic_regression(features, labels, num_classes: int, l2: float, max_iter: int = 500,
                            tolerance: float = 1e-6, device: str | torch.device = "cpu") -> LinearClassifier:
    """Minimise mean cross-entropy + l2/2 * ||W||^2 (bias not penalised) over standardised features, full batch."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=device)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
    mean = x.mean(dim=0)
    std = x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance,
                                  tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return LinearClassifier(weight.detach(), bias.detach(), mean, std)


def topk_accuracy(scores: torch.Tensor, labels, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=scores.device)
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (top == labels.unsqueeze(1)).any(dim=1).float().mean().item()


def held_out_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, validation): `fraction` of each class held out, seeded."""
    rng = np.random.default_rng(seed)
    fit, validation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(len(members) * fraction)) if len(members) > 1 else 0
        validation.append(members[:cut])
        fit.append(members[cut:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(validation))


def linear_probe(train_features, train_labels, test_features, test_labels, num_classes: int,
                 l2_grid: tuple[float, ...] | None = None, validation_fraction: float = 0.2, seed: int = 0,
                 device: str | torch.device = "cpu", max_iter: int = 500) -> ProbeResult:
    """Pick the L2 strength on a held-out part of train, refit on all of train, report top-1/top-5 on test.

    `l2_grid` None: L2_GRID, widened past an edge where the best strength is (see the module's docstring)."""
    train_features, test_features = np.asarray(train_features), np.asarray(test_features)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    fit, validation = held_out_split(train_labels, validation_fraction, seed)
    validation_top1: dict[float, float] = {}

    def validate(l2: float) -> None:
        classifier = fit_logistic_regression(train_features[fit], train_labels[fit], num_classes, l2, max_iter,
                                             device=device)
        validation_top1[l2] = topk_accuracy(classifier.scores(train_features[validation]),
                                            train_labels[validation], 1)

    for l2 in l2_grid or L2_GRID:
        validate(l2)
    searched, added = dict(validation_top1), []
    while l2_grid is None and len(added) < WIDENINGS and (step := rising_edge(validation_top1)):
        added.append(step)
        validate(step)
    validation_top1 = dict(sorted(validation_top1.items()))
    best = max(validation_top1, key=lambda l2: (validation_top1[l2], l2))  # ties: the stronger regularisation
    classifier = fit_logistic_regression(train_features, train_labels, num_classes, best, max_iter, device=device)
    scores = classifier.scores(test_features)
    return ProbeResult(top1=topk_accuracy(scores, test_labels, 1), top5=topk_accuracy(scores, test_labels, 5), l2=best,
                       validation_top1=validation_top1, predictions=scores.argmax(dim=1).cpu().numpy(),
                       l2_note=_edge_note(searched, added, validation_top1, given=l2_grid is not None))


def rising_edge(validation_top1: dict[float, float]) -> float | None:
    """The strength 10x past the edge of the grid where the best one is, when validation accuracy still rises
    towards it (the best beats its neighbour inside the grid); else None."""
    strengths = sorted(validation_top1)
    if len(strengths) < 2:
        return None
    best = max(strengths, key=lambda l2: (validation_top1[l2], l2))
    if best == strengths[-1] and validation_top1[best] > validation_top1[strengths[-2]]:
        return best * 10
    if best == strengths[0] and best > 0 and validation_top1[best] > validation_top1[strengths[1]]:
        return best / 10
    return None


def _edge_note(searched: dict[float, float], added: list[float], validation_top1: dict[float, float],
               given: bool) -> str:
    """One line: how the default grid `searched` was widened (`added`), or that the best of a grid given sits at its
    edge with validation accuracy still rising; "" when neither."""
    best = max(validation_top1, key=lambda l2: (validation_top1[l2], l2))
    beyond = rising_edge(validation_top1)
    if given:
        return "" if beyond is None else (f"the best L2, {best:g}, is at the edge of the --l2 given, with validation "
                                          f"top-1 still rising towards it: add --l2 {beyond:g}")
    if not added:
        return ""
    edge = max(searched) if added[0] > max(searched) else min(searched)
    still = f"; still rising at its last widening (at most {WIDENINGS})" if beyond else ""
    return (f"the default L2 grid was widened past {edge:g}, where validation top-1 was still rising, to "
            f"{', '.join(f'{l2:g}' for l2 in added)}; chose {best:g} ({100 * validation_top1[best]:.1f}%){still}")
