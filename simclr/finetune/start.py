"""Where fine-tuning starts: a training checkpoint (f and g) or an exported model (f read back from its ONNX)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simclr.finetune.onnx_weights import PARITY_TOLERANCE, calibrate_folded_batch_norm, read_onnx_encoder
from simclr.train.checkpoint import CheckpointError, checkpoint_sha256, load_checkpoint, resolve_checkpoint
from simclr.train.config import ModelConfig, TrainConfig
from simclr.train.model import ResNetEncoder, UInt8Encoder


@dataclass
class PretrainedModel:
    """The pre-trained network a run starts from."""

    kind: str  # "checkpoint" or "onnx"
    path: Path
    sha256: str
    model_config: ModelConfig
    image_size: int
    encoder: ResNetEncoder
    head_state: dict[str, torch.Tensor] | None  # g's weights (checkpoints only)
    folded: bool = False  # an ONNX export with batch norm folded into the convolutions

    @property
    def default_head_layers(self) -> int:
        return 1 if self.head_state is not None and self.model_config.head_layers > 1 else 0

    def as_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.sha256, "image_size": self.image_size,
                "architecture": self.model_config.arch, "width": self.model_config.width,
                "stem": self.model_config.stem, "folded_batch_norm": self.folded}


def open_pretrained(source: Path) -> PretrainedModel:
    """A checkpoint (last.pt, a slim one or its parts, or a run directory holding one) or an exported model (a model
    directory, a version directory or a .onnx file)."""
    source = Path(source)
    checkpoint = _checkpoint_of(source)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        if "head" not in state:
            raise CheckpointError(f"{checkpoint}: not a pre-training checkpoint (no projection head g); a "
                                  "fine-tuned run is exported with simclr export RUN_DIR --classifier")
        config = TrainConfig.from_dict(state["config"])
        encoder = ResNetEncoder(config.model)
        encoder.load_state_dict(state["encoder"])
        return PretrainedModel("checkpoint", checkpoint.resolve(), checkpoint_sha256(checkpoint), config.model,
                               config.augment.image_size, encoder, state["head"])
    try:
        read = read_onnx_encoder(source)
    except FileNotFoundError:
        raise FileNotFoundError(f"{source}: not a checkpoint (last.pt), a run directory or an exported model "
                                "directory") from None
    return PretrainedModel("onnx", read.path, read.sha256, read.model_config, read.metadata.image_size,
                           read.encoder, None, read.folded)


def _checkpoint_of(source: Path) -> Path | None:
    """The checkpoint `source` names (a file, one of its parts, or a run directory's last.pt), or None: then it is an
    exported model, or nothing."""
    if source.suffix == ".onnx":
        return None
    try:
        return resolve_checkpoint(source)
    except FileNotFoundError:
        return None


def prepare_onnx_start(pretrained: PretrainedModel, images: torch.Tensor) -> float:
    """For a model read back from ONNX: check that f equals ONNX Runtime's on `images` (uint8 [N, 3, S, S]; max abs
    difference at most 1e-4, else ValueError), and for a folded model give its batch norms the statistics of these
    images (the function is unchanged). Returns the measured difference."""
    from simclr.embed.onnx_encoder import OnnxEncoder

    pixels = images.permute(0, 2, 3, 1).contiguous()
    reference = OnnxEncoder(pretrained.path, device="cpu").embed(pixels.numpy())
    if pretrained.folded:
        calibrate_folded_batch_norm(pretrained.encoder, images.float() / 255.0)
    with torch.no_grad():
        ours = UInt8Encoder(pretrained.encoder.eval())(pixels).numpy()
    difference = float(np.abs(ours - reference).max())
    if not difference <= PARITY_TOLERANCE:
        raise ValueError(f"{pretrained.path}: the encoder read back from the ONNX differs from ONNX Runtime by "
                         f"{difference:.3g} (max abs; tolerance {PARITY_TOLERANCE:g}); cannot fine-tune it")
    return difference
