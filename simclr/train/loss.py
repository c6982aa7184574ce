"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, eq. 1), and one training
step's loss over the global batch of all processes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simclr.train import distributed


def _similarities(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-similarity logits [2N, 2N] / temperature with self-pairs masked out, and each row's positive [2N]."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent needs two [N, D] tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature {temperature}: must be positive")
    count = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2N, D]
    logits = z @ z.T / temperature  # [2N, 2N]
    logits.fill_diagonal_(float("-inf"))  # a view is never its own negative
    positives = torch.arange(2 * count, device=z.device).roll(count)  # row i pairs with i + N (mod 2N)
    return logits, positives


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean NT-Xent loss over both views of N pairs.

    z1, z2: [N, D] projections of the two views (row i of each is one image). Every view is an anchor whose
    positive is the other view of its image and whose negatives are the 2(N-1) other views. Computed as one
    matrix product and a cross-entropy, in float32 whatever the input dtype.
    """
    logits, positives = _similarities(z1, z2, temperature)
    return F.cross_entropy(logits, positives)


@torch.no_grad()
def contrastive_accuracy(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Fraction of the 2N views whose most similar other view is their positive (a scalar tensor)."""
    logits, positives = _similarities(z1, z2, temperature=1.0)
    return (logits.argmax(dim=1) == positives).float().mean()


def contrastive_step(model: nn.Module, views: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, contrastive accuracy) of one batch of pairs, over the global batch of all ranks.

    views: [2n, 3, S, S] this rank's two views, view 1 of its n images then view 2. Both views go through f and g in
    one forward pass (so batch norm sees all 2n images); the projections of all ranks are gathered, gradients flowing
    into this rank's own.
    """
    count = len(views) // 2
    z = model(views)  # [2n, out]
    z1 = distributed.gather_with_own_gradient(z[:count])  # [N, out], N = global batch
    z2 = distributed.gather_with_own_gradient(z[count:])
    return nt_xent(z1, z2, temperature), contrastive_accuracy(z1, z2)


class ContrastiveObjective(nn.Module):
    """`contrastive_step` as a module, so that torch.compile takes f, g and the loss as one graph."""

    def __init__(self, network: nn.Module, temperature: float) -> None:
        super().__init__()
        self.network, self.temperature = network, temperature

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return contrastive_step(self.network, views, self.temperature)
