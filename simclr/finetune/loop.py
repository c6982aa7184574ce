"""The fine-tuning run: labelled batches -> crop and flip -> classifier -> cross-entropy -> optimiser, on the run
machinery pre-training uses (progress bar, metrics.jsonl, curves, atomic checkpoints, SIGTERM saves, exact resume,
DDP with global batch norm, AMP on GPU)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from simclr.finetune.config import FinetuneConfig
from simclr.finetune.evaluate import evaluate_classifier
from simclr.finetune.labels import LabelledImages
from simclr.finetune.model import Classifier
from simclr.progress import duration, significant
from simclr.train import distributed
from simclr.train.augment import crop_and_flip
from simclr.train.batches import ResumableSampler
from simclr.train.checkpoint import load_checkpoint, save_checkpoint
from simclr.train.epochs import EpochLoop
from simclr.train.optim import build_optimizer, peak_learning_rate, warmup_cosine
from simclr.train.plan import StepTimer
from simclr.train.runtime import mixed_precision

log = logging.getLogger("simclr")

CHECKPOINT_KIND = "finetune"
ESTIMATE_AFTER, ESTIMATE_STEPS = 1, 3  # the estimate leaves out the first step (warm-up) and times the next three


class FineTuner(EpochLoop):
    """One fine-tuning run of `model` on `train` (evaluated on `test` when due)."""

    step_names = ("loss", "accuracy")
    curve_titles = {"loss": "cross-entropy", "accuracy": "train accuracy (augmented batches)",
                    "test_top1": "test top-1"}
    one_bar = True  # a few steps an epoch: one bar for the run, so that its time left is the whole run's

    def __init__(self, config: FinetuneConfig, out: Path, device: torch.device, model: Classifier,
                 train: LabelledImages, test: LabelledImages, resume: bool, baseline_follows: bool = False) -> None:
        """`baseline_follows`: --compare trains the baseline with the same steps after this run; the estimate of
        the time counts it too."""
        super().__init__(config, out, device)
        if config.batch_size % self.world:
            raise ValueError(f"--batch-size {config.batch_size}: must divide evenly across {self.world} processes")
        self.train, self.test = train, test
        self.local_batch = config.batch_size // self.world
        self.steps_per_epoch = len(ResumableSampler(len(train), config.seed, 0)) // self.local_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"--batch-size {config.batch_size} is larger than the {len(train)} labelled images")
        total_steps = self.steps_per_epoch * config.epochs
        self.max_steps = min(total_steps, config.max_steps or total_steps)

        self.model = model.train()  # batch norm in train mode, as the papers fine-tune
        if self.world > 1 and config.sync_batch_norm:
            self.model = distributed.convert_batch_norm(self.model, device)
        self.model.to(device)
        # The classifier starts at zero, where LARS's trust ratio would keep it: as SimCLR's code, no adaptation
        # and no weight decay for it.
        self.optimizer = build_optimizer(self.model, config.optim, config.batch_size, unadapted=self.model.linear)
        self.schedule = warmup_cosine(peak_learning_rate(config.optim, config.batch_size), total_steps,
                                      round(config.warmup_epochs * self.steps_per_epoch))
        self.autocast, self.scaler = mixed_precision(device, config.precision)
        self.augment_generator = torch.Generator().manual_seed(config.seed * 1_000_003 + distributed.rank())
        self.augment = crop_and_flip(config.image_size, (config.crop_scale_min, 1.0), self.augment_generator)
        self.resumed = resume
        if resume:
            self._restore()
        self.baseline_follows = baseline_follows
        self.started, self.first_step = time.monotonic(), self.step
        self.step_timer = StepTimer(self.step, device, ESTIMATE_AFTER, ESTIMATE_STEPS)
        self.network: nn.Module = self.model
        if self.world > 1:
            self.network = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda"
                                                   else None)

    def _restore(self) -> None:
        state = load_checkpoint(self.checkpoint_path)
        if state.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"--resume: {self.checkpoint_path} is not a fine-tuning checkpoint")
        self.model.load_state_dict(state["classifier"])
        self.restore_loop_state(state)

    def save(self, epoch: int) -> None:
        loop_state = self.loop_state(epoch)
        if self.is_main:
            save_checkpoint(self.checkpoint_path, {"kind": CHECKPOINT_KIND, "config": dataclasses.asdict(self.config),
                                                   "classes": list(self.train.classes),
                                                   "encoder": self.model.encoder.state_dict(),
                                                   "classifier": self.model.state_dict(), **loop_state})

    def run_epochs(self) -> tuple[tuple[float, ...], float]:
        if self.is_main:
            log.info("%s", self.plan())
        return super().run_epochs()

    def plan(self) -> str:
        """The run in one line: labelled images, epochs, steps and the test split."""
        config = self.config
        what = "training from random weights" if config.start == "random" else "fine-tuning"
        total = config.epochs * self.steps_per_epoch
        stops = f", stopping after step {self.max_steps} (--max-steps)" if self.max_steps < total else ""
        resuming = f", resuming after step {self.step}" if self.step else ""
        return (f"{what} on {len(self.train)} labelled images ({len(self.train.classes)} classes): "
                f"{config.epochs} epochs x {self.steps_per_epoch} steps of {config.batch_size} = {total} steps"
                f"{stops}{resuming}; then the test split's {len(self.test)} images")

    def estimate(self, seconds_per_step: float) -> str:
        """The estimated time of this call's steps (and with the baseline that follows): the time so far, then
        `seconds_per_step` for each step left."""
        total = time.monotonic() - self.started + (self.max_steps - self.step) * seconds_per_step
        rate = significant(self.config.batch_size / seconds_per_step)
        line = (f"estimate: {seconds_per_step:.3g} s a step ({rate} img/s): about {duration(total)} for "
                f"{self.max_steps - self.first_step} steps")
        with_baseline = total + self.max_steps * seconds_per_step  # the baseline has every step to do
        return line + (f", about {duration(with_baseline)} with the baseline of --compare" if self.baseline_follows
                       else "")

    def batches(self, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = ResumableSampler(len(self.train), self.config.seed, epoch, skip * self.local_batch)
        order = torch.tensor(list(sampler), dtype=torch.long)
        for start in range(0, len(order) - self.local_batch + 1, self.local_batch):
            rows = order[start:start + self.local_batch]
            yield self.train.images[rows], self.train.labels[rows]

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on uint8 images [n, 3, H, W] and their labels; returns (loss, accuracy) as 0-d
        tensors on the device (read, and the loss checked, every --log-every steps)."""
        images, labels = (part.to(self.device, non_blocking=True) for part in batch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule[self.step]
        with self.autocast:
            logits = self.network(self.augment(images))
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        seconds_per_step = self.step_timer.seconds_per_step(self.step)
        if seconds_per_step is not None and self.is_main:
            log.info("%s", self.estimate(seconds_per_step))
        return loss.detach(), (logits.argmax(dim=1) == labels).float().mean()

    def end_of_epoch(self, record: dict) -> None:
        every = self.config.eval_every
        if every and self.epoch % every == 0 and self.epoch < self.config.epochs and self.is_main:
            record["test_top1"] = evaluate_classifier(self.model, self.test, self.config.image_size,
                                                      self.device).top1
            log.info("epoch %d: test top-1 %.2f%%", self.epoch, 100 * record["test_top1"])
