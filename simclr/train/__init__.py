"""Training: augmentation, encoder and head, NT-Xent, LARS, and the (distributed) training loop."""

from simclr.train.config import TrainConfig, build_config
from simclr.train.loop import TrainingError, TrainingInterrupted, TrainResult, train
from simclr.train.loss import contrastive_accuracy, nt_xent
from simclr.train.model import ProjectionHead, ResNetEncoder, SimCLRModel

__all__ = ["ProjectionHead", "ResNetEncoder", "SimCLRModel", "TrainConfig", "TrainResult", "TrainingError",
           "TrainingInterrupted", "build_config", "contrastive_accuracy", "nt_xent", "train"]
