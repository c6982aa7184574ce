"""The classifier fine-tuning trains: encoder f, the kept layers of projection head g, a zero-initialised linear
layer; and its served form (uint8 images in, embedding and logits out)."""

from __future__ import annotations

import torch
from torch import nn

from simclr.train.config import ModelConfig
from simclr.train.model import ProjectionHead, ResNetEncoder


class Classifier(nn.Module):
    """Float images [N, 3, S, S] in [0, 1] -> logits [N, C] through f, the kept layers of g and a linear layer."""

    def __init__(self, encoder: ResNetEncoder, head: nn.Sequential, num_classes: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        linears = [module for module in head if isinstance(module, nn.Linear)]
        width = linears[-1].out_features if linears else encoder.feature_dim
        self.linear = nn.Linear(width, num_classes)
        nn.init.zeros_(self.linear.weight)  # as SimCLRv2: every class starts equally likely
        nn.init.zeros_(self.linear.bias)

    def embed_and_classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h: the encoder's embedding [N, D], logits [N, C])."""
        embedding = self.encoder.features(images)
        return embedding, self.linear(self.head(embedding))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_and_classify(images)[1]


def kept_head(config: ModelConfig, layers: int, state: dict[str, torch.Tensor] | None = None) -> nn.Sequential:
    """The first `layers` layers of g (linear, batch norm, ReLU each), with `state`'s weights or fresh ones."""
    available = config.head_layers - 1  # g's last layer makes z, the contrastive output
    if layers > available:
        raise ValueError(f"--head-layers-kept {layers}: this g has {available} layer(s) below its output layer")
    dim = ResNetEncoder(config).feature_dim
    head = ProjectionHead(dim, config.head_hidden or dim, config.head_out, config.head_layers, config.head_batch_norm)
    if state is not None:
        head.load_state_dict(state)
    per_layer = 3 if config.head_batch_norm else 2
    return nn.Sequential(*list(head.mlp)[:per_layer * layers])


class UInt8Classifier(nn.Module):
    """The served classifier: uint8 [N, H, W, 3] RGB -> (embedding [N, D], logits [N, C]), float32."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier.embed_and_classify(image.permute(0, 3, 1, 2).float() / 255.0)
