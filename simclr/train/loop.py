"""The training run: data -> two views -> f -> g -> NT-Xent -> optimiser, with checkpoints, metrics and curves."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from simclr.data.datasets import InMemoryImages, training_images
from simclr.train import distributed
from simclr.train.augment import TwoViews, simclr_augmentation
from simclr.train.batches import ResumableSampler, epoch_batches
from simclr.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from simclr.train.config import TrainConfig, resumed
from simclr.train.epochs import EpochLoop, TrainingError
from simclr.train.loss import contrastive_step
from simclr.train.model import SimCLRModel
from simclr.train.monitor import KnnMonitor
from simclr.train.optim import build_optimizer, peak_learning_rate, warmup_cosine
from simclr.train.runtime import mixed_precision, resolve_device

log = logging.getLogger("simclr")

@dataclass(frozen=True)
class TrainResult:
    out: Path
    steps: int
    epochs_completed: int
    loss: float
    contrastive_accuracy: float
    images_per_second: float
    wall_seconds: float


def run_config(out: Path, config: TrainConfig | None, resume: bool, overrides: dict) -> TrainConfig:
    """The config a run in `out` uses: `config` for a new run, the saved one (plus driving overrides) on resume.

    Refuses to start a new run over an existing one, to resume where nothing was saved, and to resume with a
    recipe override that differs from the saved run's.
    """
    checkpoint = Path(out) / CHECKPOINT_NAME
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: {checkpoint} does not exist (nothing to resume in --out {out})")
        return resumed(TrainConfig.from_dict(load_checkpoint(checkpoint)["config"]), overrides)
    if checkpoint.exists():
        raise FileExistsError(f"--out {out} already holds a run ({checkpoint}); pass --resume to continue it "
                              "or choose another --out")
    if config is None:
        raise ValueError("a new run needs a config")
    return config


def train(config: TrainConfig, out: Path, resume: bool = False) -> TrainResult:
    """Run (or resume) SimCLR pre-training; writes last.pt, config.json, metrics.jsonl and the curve PNG to `out`.

    Under torchrun each process trains on its share of every global batch; only rank 0 writes files.
    """
    device = resolve_device(config.device)
    distributed.setup(device)
    try:
        return Trainer(config, Path(out), device, resume).run()
    finally:
        distributed.teardown()


class Trainer(EpochLoop):
    """One run's moving parts: data, model, optimiser and schedule, precision, RNG, and the files it writes."""

    step_names = ("loss", "contrastive_accuracy")
    curve_titles = {"loss": "NT-Xent loss", "contrastive_accuracy": "contrastive accuracy", "knn_top1": "kNN top-1"}

    def __init__(self, config: TrainConfig, out: Path, device: torch.device, resume: bool) -> None:
        super().__init__(config, out, device)
        if config.batch_size % self.world:
            raise ValueError(f"--batch-size {config.batch_size}: must divide evenly across {self.world} processes")
        self.local_batch = config.batch_size // self.world

        # Data
        self.dataset = training_images(config.data, Path(config.data_root) if config.data_root else None,
                                       config.decode_size, config.workers, config.in_memory)
        if isinstance(self.dataset, InMemoryImages) and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if self.dataset.images.nbytes < free // 4:  # batches are then gathered on the GPU: no copies per step
                self.dataset = dataclasses.replace(self.dataset, images=self.dataset.images.to(device))
        self.steps_per_epoch = len(ResumableSampler(len(self.dataset), config.seed, 0)) // self.local_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"--batch-size {config.batch_size} is larger than the {len(self.dataset)} images "
                             f"of {config.data}")
        total_steps = self.steps_per_epoch * config.epochs
        self.max_steps = min(total_steps, config.max_steps or total_steps)

        # Model, optimiser, schedule, precision
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.model = SimCLRModel(config.model)
        if self.world > 1 and config.sync_batch_norm:
            self.model = distributed.convert_batch_norm(self.model, device)
        channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(device, memory_format=self.memory_format)
        self.optimizer = build_optimizer(self.model, config.optim, config.batch_size)
        self.schedule = warmup_cosine(peak_learning_rate(config.optim, config.batch_size), total_steps,
                                      round(config.optim.warmup_epochs * self.steps_per_epoch))
        self.autocast, self.scaler = mixed_precision(device, config.precision)
        self.augment_generator = torch.Generator().manual_seed(config.seed * 1_000_003 + distributed.rank())
        self.two_views = TwoViews(simclr_augmentation(config.augment, self.augment_generator))

        self.resumed = resume
        if resume:
            self._restore()
        self.monitor = KnnMonitor(config, device) if config.knn_every and self.is_main else None

        self.network: nn.Module = self.model
        if self.world > 1:
            self.network = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda"
                                                   else None)
        if config.compile:
            self.network = torch.compile(self.network)

    def _restore(self) -> None:
        state = load_checkpoint(self.checkpoint_path)
        self.model.encoder.load_state_dict(state["encoder"])
        self.model.head.load_state_dict(state["head"])
        self.restore_loop_state(state)

    def save(self, epoch: int) -> None:
        """Save everything needed to continue exactly from here. Collective: every rank calls it, rank 0 writes."""
        loop_state = self.loop_state(epoch)
        if self.is_main:
            save_checkpoint(self.checkpoint_path, {"config": dataclasses.asdict(self.config),
                                                   "encoder": self.model.encoder.state_dict(),
                                                   "head": self.model.head.state_dict(), **loop_state})

    def train_step(self, images: torch.Tensor) -> tuple[float, float]:
        """One optimiser step on a uint8 batch [n, 3, H, W]; returns (loss, contrastive accuracy)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule[self.step]
        view1, view2 = self.two_views(images.to(self.device, non_blocking=True))
        with self.autocast:
            loss, accuracy = contrastive_step(self.network, view1.contiguous(memory_format=self.memory_format),
                                              view2.contiguous(memory_format=self.memory_format),
                                              self.config.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        # Each rank holds its share of the full gradient and DDP averages: scale by the world size to undo that.
        self.scaler.scale(loss * self.world).backward()
        loss_value = loss.item()
        self.check_finite(loss_value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return loss_value, accuracy.item()

    def run(self) -> TrainResult:
        """Train to --epochs (or --max-steps), writing config.json, metrics, checkpoints and the curve PNG."""
        started = time.monotonic()
        (loss, accuracy), images_per_second = self.run_epochs()
        return TrainResult(out=self.out, steps=self.step, epochs_completed=self.step // self.steps_per_epoch,
                           loss=loss, contrastive_accuracy=accuracy, images_per_second=images_per_second,
                           wall_seconds=time.monotonic() - started)

    def batches(self, epoch: int, skip: int) -> Iterator[torch.Tensor]:
        """This rank's uint8 batches of `epoch`, after the first `skip` (done before a resume)."""
        config = self.config
        sampler = ResumableSampler(len(self.dataset), config.seed, epoch, skip * self.local_batch)
        for images in epoch_batches(self.dataset, sampler, self.local_batch, config.workers, config.seed + epoch,
                                    pin_memory=self.device.type == "cuda"):
            if images.numel() == 0:
                raise TrainingError(f"{config.data}: no image of a batch of {self.local_batch} could be decoded "
                                    "(see the warnings above)")
            yield images

    def end_of_epoch(self, record: dict) -> None:
        if self.monitor and self.epoch % self.config.knn_every == 0:
            record["knn_top1"] = self.monitor(self.model.encoder)
            log.info("epoch %d: kNN top-1 %.2f%%", self.epoch, 100 * record["knn_top1"])
