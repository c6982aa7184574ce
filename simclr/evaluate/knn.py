"""Weighted kNN classification on frozen features (Wu et al. 2018): cosine similarity, exp(sim / T) votes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_class_scores(train_features, train_labels, test_features, num_classes: int, k: int = 200,
                     temperature: float = 0.1, chunk_size: int = 1024) -> torch.Tensor:
    """Vote totals [Q, C] for each test row from its k most cosine-similar train rows.

    train_features [M, D], train_labels [M] (ints in [0, C)), test_features [Q, D]: torch tensors or NumPy
    arrays. Each neighbour votes exp(similarity / temperature) for its label. Works in chunks of test rows.
    """
    train = F.normalize(torch.as_tensor(train_features).float(), dim=1)
    test = F.normalize(torch.as_tensor(test_features).float(), dim=1)
    labels = torch.as_tensor(train_labels).long().to(train.device)
    if len(train) != len(labels):
        raise ValueError(f"{len(train)} train features but {len(labels)} labels")
    k = min(k, len(train))
    scores = []
    for start in range(0, len(test), chunk_size):
        similarity = test[start:start + chunk_size] @ train.T  # [q, M]
        top_similarity, top_index = similarity.topk(k, dim=1)  # [q, k]
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(len(top_index), num_classes, device=train.device)
        votes.scatter_add_(1, labels[top_index], weights)
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def knn_top1(train_features, train_labels, test_features, test_labels, num_classes: int, k: int = 200,
             temperature: float = 0.1) -> float:
    """Top-1 accuracy (a fraction) of the weighted kNN classifier."""
    scores = knn_class_scores(train_features, train_labels, test_features, num_classes, k, temperature)
    return (scores.argmax(dim=1).cpu() == torch.as_tensor(test_labels).long()).float().mean().item()
