"""Encoder f (a torchvision-block ResNet with optional CIFAR stem and width multiplier) and projection head g."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from simclr.train.config import STEMS, ModelConfig

# (block, blocks per stage) as in torchvision's resnet18/34/50.
RESNET_LAYOUTS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNetEncoder(nn.Module):
    """ResNet trunk that maps float images in [0, 1], [N, 3, H, W], to h = globally pooled features [N, D].

    The mean/std normalisation is part of the module, so an exported encoder carries it. The stem: `cifar`, a
    3x3 stride-1 convolution with no max-pool (32 px images keep 32x32 maps); `small`, a 3x3 stride-2 convolution
    with no max-pool (64 px photos get 32x32 maps, the cost per image of the CIFAR model); `imagenet`, torchvision's
    7x7 stride-2 convolution and max-pool (a quarter of the side). `width` scales every stage's channels.
    """

    def __init__(self, config: ModelConfig, zero_init_residual: bool = True) -> None:
        super().__init__()
        if config.arch not in RESNET_LAYOUTS:
            raise ValueError(f"--arch {config.arch!r}: choose one of {', '.join(RESNET_LAYOUTS)}")
        block, depths = RESNET_LAYOUTS[config.arch]
        base = max(1, round(64 * config.width))
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1))
        self.stem = _stem(config.stem, base)
        stages, channels = [], base
        for index, depth in enumerate(depths):
            planes = base * 2**index
            stages.append(self._stage(block, channels, planes, depth, stride=1 if index == 0 else 2))
            channels = planes * block.expansion
        self.stages = nn.Sequential(*stages)
        self.feature_dim = channels
        self._init_weights(zero_init_residual)

    @staticmethod
    def _stage(block: type[nn.Module], in_channels: int, planes: int, depth: int, stride: int) -> nn.Sequential:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_channels))
        layers = [block(in_channels, planes, stride, downsample)]
        layers += [block(out_channels, planes) for _ in range(depth - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # He init for convolutions, as torchvision. For training, the last BN of each residual branch starts at
        # zero (as SimCLR's reference code), so every block begins as the identity.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if not zero_init_residual:
            return
        for module in self.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)
            elif isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] floats in [0, 1] -> h [N, D]."""
        x = (images - self.mean) / self.std
        x = self.stages(self.stem(x))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def _stem(kind: str, channels: int) -> nn.Sequential:
    if kind == "imagenet":
        return nn.Sequential(nn.Conv2d(3, channels, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(channels),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
    if kind not in ("cifar", "small"):
        raise ValueError(f"--stem {kind!r}: choose one of {', '.join(STEMS)}")
    stride = 1 if kind == "cifar" else 2
    return nn.Sequential(nn.Conv2d(3, channels, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True))


class ProjectionHead(nn.Module):
    """g: an MLP [N, D] -> z [N, out_dim]; `layers` linear layers with ReLU (and BN) between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, batch_norm: bool = True) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"--head-layers {layers}: must be at least 1")
        modules: list[nn.Module] = []
        width = in_dim
        for _ in range(layers - 1):
            modules.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            if batch_norm:
                modules.append(nn.BatchNorm1d(hidden_dim))
            modules.append(nn.ReLU(inplace=True))
            width = hidden_dim
        modules.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class SimCLRModel(nn.Module):
    """f followed by g; forward returns z [N, out_dim]. Export keeps only `encoder`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(config)
        dim = self.encoder.feature_dim
        self.head = ProjectionHead(dim, config.head_hidden or dim, config.head_out, config.head_layers,
                                   config.head_batch_norm)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.features(images))


class UInt8Encoder(nn.Module):
    """The served encoder: uint8 [N, H, W, 3] RGB -> float32 h [N, D]. Cast, scaling and NHWC->NCHW happen here,
    the mean/std normalisation inside `encoder`, so a client sends raw pixels and cannot get them wrong."""

    def __init__(self, encoder: ResNetEncoder, half: bool = False) -> None:
        super().__init__()
        self.encoder = encoder.half() if half else encoder
        self.half = half

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = image.permute(0, 3, 1, 2).float() / 255.0
        if self.half:
            pixels = pixels.half()
        return self.encoder.features(pixels).float()
