"""Encoder f's stems: the feature-map size each gives, and the same embedding dimension for all."""

from __future__ import annotations

import pytest
import torch

from simclr.train.config import ModelConfig
from simclr.train.model import ResNetEncoder


@pytest.mark.parametrize("stem,image_size,map_side", [
    ("cifar", 32, 32),
    ("small", 64, 32),  # one stride-2 3x3 conv: a 64 px photo costs what a 32 px CIFAR image costs
    ("imagenet", 64, 16),  # stride-2 7x7 conv and max-pool: a quarter of the side
])
def test_stem_output_side(stem: str, image_size: int, map_side: int) -> None:
    encoder = ResNetEncoder(ModelConfig(stem=stem, width=0.125)).eval()
    images = torch.rand(2, 3, image_size, image_size)
    with torch.no_grad():
        maps = encoder.stem(images)
        assert maps.shape == (2, 8, map_side, map_side)
        assert encoder.features(images).shape == (2, encoder.feature_dim) == (2, 64)


def test_small_stem_is_one_3x3_stride_2_convolution_without_max_pool() -> None:
    stem = ResNetEncoder(ModelConfig(stem="small")).stem
    convolutions = [m for m in stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == 1 and convolutions[0].kernel_size == (3, 3) and convolutions[0].stride == (2, 2)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in stem.modules())
