"""The run machinery every training command shares: epochs of optimiser steps with a progress bar, metrics.jsonl
lines, atomic checkpoints (on a timer or at each epoch's end, at the run's end, on SIGINT/SIGTERM), an exact resume
and the curves PNG. A subclass says what one step does, what a checkpoint holds and what an epoch's end adds.

A step's values stay on the device until they are read, every --log-every steps and before every save, in one copy:
the host never waits for the device in between."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from simclr.atomic import atomic_write_text
from simclr.locks import output_lock
from simclr.plots import plot_training_curves
from simclr.progress import progress_bar, significant
from simclr.train import distributed
from simclr.train.checkpoint import CHECKPOINT_NAME, CONFIG_NAME
from simclr.train.monitor import MetricsLog, ThroughputWindow
from simclr.train.runtime import SaveTimer, StopSignals

log = logging.getLogger("simclr")

METRICS_NAME = "metrics.jsonl"
CURVE_NAME = "training_curves.png"


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, unreadable data); the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped the run after saving a checkpoint it can resume from."""


class EpochLoop(ABC):
    """Runs `config.epochs` epochs (or to `max_steps`) of `train_step` over `batches`.

    The subclass sets `steps_per_epoch`, `max_steps`, `schedule` (the learning rate of every step) and `step_names`
    (what `train_step` returns, in order, as 0-d tensors: the first is the loss; each is logged and averaged per
    epoch),
    and implements `batches`, `train_step`, `save` and optionally `end_of_epoch`. `config` needs `epochs`,
    `batch_size`, `log_every`, `save_every_minutes` and `to_json()`.
    """

    step_names: tuple[str, ...] = ("loss",)
    curve_titles: dict[str, str] = {}
    one_bar = False  # one progress bar over the whole run's steps instead of one an epoch

    def __init__(self, config, out: Path, device: torch.device) -> None:
        self.config, self.out, self.device = config, out, device
        self.is_main = distributed.rank() == 0
        self.world = distributed.world_size()
        self.checkpoint_path = out / CHECKPOINT_NAME
        self.step, self.epoch = 0, 0
        self.epoch_steps: list[tuple[float, ...]] = []  # this epoch's step values read so far, resumes included
        self.unread: list[tuple[torch.Tensor, ...]] = []  # step values still on the device
        self.steps_per_epoch = self.max_steps = 0
        self.schedule: list[float] = []
        self.resumed = False
        self.metrics: MetricsLog | None = None  # opened by run_epochs(); building a loop writes nothing
        self.save_timer = SaveTimer(config.save_every_minutes)

    @abstractmethod
    def batches(self, epoch: int, skip: int) -> Iterator:
        """This rank's batches of `epoch`, after the first `skip` (done before a resume)."""

    @abstractmethod
    def train_step(self, batch) -> tuple[torch.Tensor, ...]:
        """One optimiser step; returns the values named by `step_names` (0-d tensors, left on the device)."""

    @abstractmethod
    def save(self, epoch: int) -> None:
        """Save everything needed to continue exactly from here (collective: every rank calls it)."""

    def end_of_epoch(self, record: dict) -> None:  # noqa: B027 (an optional hook: by default nothing to add)
        """Add what an epoch's end measures (evaluation, kNN) to its metrics record."""

    def loop_state(self, epoch: int) -> dict:
        """What a checkpoint holds besides the model: optimiser, gradient scaler, position, this epoch's step values
        and the RNG states (every rank's augmentation generator: collective). Needs `optimizer`, `scaler` and
        `augment_generator`."""
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                "step": self.step, "epoch_steps": [list(values) for values in self.epoch_steps],
                "rng": {"augment": gather_generator_states(self.augment_generator), "torch": torch.get_rng_state()}}

    def restore_loop_state(self, state: dict) -> None:
        """Continue from a checkpoint's `loop_state`; a slim one (no optimiser state) with fresh momentum."""
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        else:
            log.warning("%s: a slim checkpoint (no optimiser state): resuming with fresh momentum",
                        self.checkpoint_path)
        self.step, self.epoch = state["step"], state["epoch"]
        self.epoch_steps = [tuple(values) for values in state.get("epoch_steps", [])]
        augment_states = state["rng"]["augment"]
        self.augment_generator.set_state(augment_states[distributed.rank() % len(augment_states)])
        torch.set_rng_state(state["rng"]["torch"])
        log.info("resuming %s at epoch %d, step %d", self.out, self.epoch + 1, self.step)

    def run_epochs(self) -> tuple[tuple[float, ...], float]:
        """Train to the end (config.json, metrics, checkpoints, curves); returns the last step's values and the
        images per second of this call."""
        # One run writes a run directory at a time (rank 0 holds the lock for all of them).
        with output_lock(self.out) if self.is_main else contextlib.nullcontext():
            return self._run_all()

    def _run_all(self) -> tuple[tuple[float, ...], float]:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / CONFIG_NAME, self.config.to_json())
            self.metrics = MetricsLog(self.out / METRICS_NAME, self.step if self.resumed else None)
        started, first_step = time.monotonic(), self.step
        values = tuple(math.nan for _ in self.step_names)
        self.save_timer.restart()
        first_epoch = f"epoch {self.epoch + 1}/{self.config.epochs}"
        run_bar = (progress_bar(total=self.max_steps, initial=self.step, desc=first_epoch, disable=not self.is_main)
                   if self.one_bar else contextlib.nullcontext())
        try:
            with StopSignals() as signals, run_bar as bar:
                while self.epoch < self.config.epochs and self.step < self.max_steps:
                    values = self._run_epoch(signals, bar)
        finally:  # a stopped or failed run gets its curves too
            if self.is_main:
                plot_training_curves(self.out / METRICS_NAME, self.out / CURVE_NAME, self.curve_titles)
        images = (self.step - first_step) * self.config.batch_size
        return values, images / max(time.monotonic() - started, 1e-9)

    def check_finite(self, loss: float, step: int | None = None) -> None:
        step = self.step + 1 if step is None else step
        if not math.isfinite(loss):
            raise TrainingError(f"loss became {loss} at step {step} (epoch {self.epoch + 1}); stopped. "
                                f"{self.checkpoint_path} keeps the last good state; lower --base-lr or use "
                                "--precision fp32")

    def read_values(self) -> tuple[float, ...] | None:
        """Bring the unread steps' values to the host (one copy), check the loss, and return the last step's."""
        if not self.unread:
            return None
        rows = torch.stack([torch.stack(values) for values in self.unread]).float().cpu().tolist()
        first = self.step - len(rows) + 1
        for offset, values in enumerate(rows):
            self.check_finite(values[0], first + offset)
        self.unread = []
        self.epoch_steps.extend(tuple(values) for values in rows)
        return tuple(rows[-1])

    def _save(self, epoch: int) -> None:
        self.read_values()  # a checkpoint never holds a step whose loss was not checked
        self.save(epoch)
        self.save_timer.restart()

    def _run_epoch(self, signals: StopSignals, run_bar: tqdm | None = None) -> tuple[float, ...]:
        """Train until the epoch ends (or --max-steps, or a signal); log; save when due. Returns the last step's
        values. Progress goes to `run_bar` (the whole run's, with `one_bar`), else to a bar of this epoch."""
        epoch = self.epoch
        epoch_end = (epoch + 1) * self.steps_per_epoch
        skip = self.step - epoch * self.steps_per_epoch  # batches already done before a resume
        window = ThroughputWindow()
        stopped, values = False, tuple(math.nan for _ in self.step_names)  # a resume can land past the last batch
        description = f"epoch {epoch + 1}/{self.config.epochs}"
        if run_bar is not None:
            run_bar.set_description(description)
        with contextlib.nullcontext(run_bar) if run_bar is not None else progress_bar(
                total=self.steps_per_epoch, initial=skip, desc=description, disable=not self.is_main) as bar:
            for batch in self.batches(epoch, skip):
                self.unread.append(self.train_step(batch))
                window.count(1)
                bar.update(1)
                logging_step = self.step % self.config.log_every == 0 or self.step == self.max_steps
                if logging_step:
                    values = self.read_values()
                    self._log_step(values, window.images_per_second(self.config.batch_size), bar)
                # Ranks agree on stopping and on timed saves, since saving gathers from every rank; across
                # processes that costs a collective, so they agree at logging steps only.
                if logging_step or not distributed.is_distributed():
                    stopped, save_due = distributed.any_rank([signals.received is not None, self.save_timer.due()],
                                                             self.device)
                    if not (stopped or self.step >= self.max_steps) and save_due and self.step < epoch_end:
                        self._save(epoch)  # the epoch's end saves anyway
                if stopped or self.step >= self.max_steps:
                    break
        values = self.read_values() or values
        if self.step >= epoch_end:
            self._end_epoch()
        run_ends = stopped or self.step >= self.max_steps or self.epoch >= self.config.epochs
        every_epoch = not self.config.save_every_minutes
        if run_ends or every_epoch or distributed.any_rank([self.save_timer.due()], self.device)[0]:
            self._save(self.epoch)
        if stopped:
            raise TrainingInterrupted(f"stopped by signal after step {self.step}; saved {self.checkpoint_path}; "
                                      "continue with --resume")
        return values

    def _log_step(self, values: tuple[float, ...], images_per_second: float, bar) -> None:
        lr = self.schedule[self.step - 1]
        named = dict(zip(self.step_names, values, strict=True))
        bar.set_postfix(**{name[:4]: f"{value:.4g}" for name, value in named.items()}, lr=f"{lr:.3g}",
                        img_s=significant(images_per_second))
        self.record({"event": "step", "step": self.step, "epoch": self.epoch + 1, **named, "lr": lr,
                      "images_per_second": images_per_second})

    def _end_epoch(self) -> None:
        """Count the finished epoch and log its means (and what `end_of_epoch` adds)."""
        columns = list(zip(*self.epoch_steps, strict=True)) if self.epoch_steps else [[math.nan]] * len(
            self.step_names)
        self.epoch_steps = []
        self.epoch += 1
        record = {"event": "epoch", "step": self.step, "epoch": self.epoch,
                  **{name: sum(column) / len(column) for name, column in zip(self.step_names, columns, strict=True)}}
        self.end_of_epoch(record)
        self.record(record)

    def record(self, record: dict) -> None:
        if self.metrics:
            self.metrics.write(record)


def gather_generator_states(generator: torch.Generator) -> list[torch.Tensor]:
    """Every rank's generator state, in rank order (collective: all ranks must call it)."""
    state = generator.get_state()
    if not distributed.is_distributed():
        return [state]
    states: list = [None] * distributed.world_size()
    torch.distributed.all_gather_object(states, state)
    return states
