"""Encoders that run in PyTorch: a training checkpoint's f, the same architecture with random weights, raw pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from simclr.embed.encoder import ModelIdentity, check_batch
from simclr.export.layout import ModelMetadata
from simclr.train.checkpoint import checkpoint_sha256, load_encoder, resolve_checkpoint
from simclr.train.config import ModelConfig
from simclr.train.model import ResNetEncoder, UInt8Encoder


class TorchEncoder:
    """Encoder f in PyTorch (eval mode): from a checkpoint, or with random weights (`ModelConfig` + seed)."""

    def __init__(self, encoder: ResNetEncoder, model_config: ModelConfig, image_size: int, identity_name: str,
                 sha256: str = "", device: str = "cpu", source: str = "") -> None:
        self.model = UInt8Encoder(encoder.eval()).to(device)
        self.model_config = model_config
        self.device = device
        self.identity = ModelIdentity(identity_name, "", sha256, image_size, encoder.feature_dim)
        self.metadata = ModelMetadata(image_size=image_size, embedding_dim=encoder.feature_dim,
                                      architecture=model_config.arch, width=model_config.width,
                                      stem=model_config.stem, mean=model_config.mean, std=model_config.std)
        self.source = source

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, device: str = "cpu", image_size: int | None = None) -> TorchEncoder:
        """f of a checkpoint, embedding at `image_size` (default: the size it was trained at)."""
        path = resolve_checkpoint(checkpoint)
        encoder, config = load_encoder(path)
        return cls(encoder, config.model, image_size or config.augment.image_size, f"checkpoint:{path.parent.name}",
                   checkpoint_sha256(path), device, str(path.resolve()))

    @classmethod
    def random(cls, config: ModelConfig, image_size: int, seed: int = 0, device: str = "cpu") -> TorchEncoder:
        """Random weights with torchvision's default initialisation (every residual branch active)."""
        torch.manual_seed(seed)
        return cls(ResNetEncoder(config, zero_init_residual=False), config, image_size,
                   f"random-{config.arch}-w{config.width:g}", device=device)

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        images = check_batch(images, self.identity)
        return self.model(torch.from_numpy(images).to(self.device)).cpu().numpy()


def model_config_from_metadata(metadata: ModelMetadata) -> ModelConfig:
    """The encoder architecture an exported model records (for a random-weights baseline of the same shape)."""
    return ModelConfig(arch=metadata.architecture, width=metadata.width, stem=metadata.stem, mean=metadata.mean,
                       std=metadata.std)


class PixelEncoder:
    """The raw-pixel baseline: each image's uint8 pixels, flattened, as float32 [N, S*S*3]."""

    def __init__(self, image_size: int) -> None:
        self.identity = ModelIdentity("pixels", "", "", image_size, image_size * image_size * 3)
        self.metadata = None
        self.source = "pixels"

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = check_batch(images, self.identity)
        return images.reshape(len(images), -1).astype(np.float32)
