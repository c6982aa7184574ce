"""The training run: data -> two views -> f -> g -> NT-Xent -> optimiser, with checkpoints, metrics and curves."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from simclr.atomic import atomic_write_text
from simclr.data.datasets import InMemoryImages, training_images
from simclr.train import distributed
from simclr.train.augment import TwoViews, simclr_augmentation
from simclr.train.batches import ResumableSampler, epoch_batches
from simclr.train.checkpoint import CHECKPOINT_NAME, CONFIG_NAME, load_checkpoint, resolve_checkpoint, save_checkpoint
from simclr.train.config import TrainConfig, resumed
from simclr.train.epochs import EpochLoop, TrainingError
from simclr.train.fingerprint import check_same_images, data_fingerprint, sample_images
from simclr.train.loss import ContrastiveObjective
from simclr.train.model import SimCLRModel
from simclr.train.monitor import KnnMonitor
from simclr.train.optim import build_optimizer, peak_learning_rate, warmup_cosine
from simclr.train.plan import StepTimer, budget_plan, extended_plan, schedule_length
from simclr.train.runtime import (
    compile_cache_path,
    load_compile_cache,
    mixed_precision,
    resolve_device,
    save_compile_cache,
    tune_backends,
)

log = logging.getLogger("simclr")

@dataclass(frozen=True)
class TrainResult:
    out: Path
    steps: int  # the run's steps so far
    steps_run: int  # steps this call trained (0: the run had nothing left to do)
    planned_steps: int
    epochs_completed: int
    loss: float
    contrastive_accuracy: float
    images_per_second: float
    wall_seconds: float


def run_config(out: Path, config: TrainConfig | None, resume: bool, overrides: dict) -> TrainConfig:
    """The config a run in `out` uses: `config` for a new run, the saved one (plus driving overrides) on resume.

    Refuses to start a new run over an existing one, to resume where nothing was saved, to resume with a recipe
    override that differs from the saved run's, and to resume on other images than the run's.
    """
    checkpoint = Path(out) / CHECKPOINT_NAME
    try:
        resolve_checkpoint(Path(out))  # last.pt or its parts
        exists = True
    except FileNotFoundError:
        exists = False
    if resume:
        if not exists:
            raise FileNotFoundError(f"--resume: {checkpoint} does not exist (nothing to resume in --out {out})")
        state = load_checkpoint(checkpoint)
        config = resumed(TrainConfig.from_dict(state["config"]), overrides)
        check_same_images(state.get("data_fingerprint"), data_fingerprint(config.data), state["config"]["data"],
                          config.data)
        return config
    if exists:
        raise FileExistsError(f"--out {out} already holds a run ({checkpoint}); pass --resume to continue it "
                              "or choose another --out")
    if config is None:
        raise ValueError("a new run needs a config")
    return config


INIT_SETTINGS = ("arch", "width", "stem", "mean", "std")  # what f's shape and input take from --init's source


def init_model_settings(source: Path, overrides: dict) -> dict:
    """The dotted settings of f (architecture, width, stem, mean/std) that --init's source fixes; ValueError
    names a given one that differs."""
    from simclr.finetune.start import open_pretrained

    model = open_pretrained(source).model_config
    settings = {f"model.{name}": getattr(model, name) for name in INIT_SETTINGS}
    for key, value in settings.items():
        given = overrides.get(key)
        if given is not None and given != value:
            raise ValueError(f"--{key.removeprefix('model.')} {given}: --init {source} is {value}; f's shape comes "
                             "from the model a run starts from")
    return settings


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
        self.clock_started = time.monotonic()  # --time-budget counts from here, data loading included
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
        self.data_fingerprint = None if resume else data_fingerprint(config.data)  # a resume reads the run's

        # Model, optimiser, precision
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.model = SimCLRModel(config.model)
        self.init_source: dict | None = None
        if config.init and not resume:
            self.init_source = self._start_from(Path(config.init))
        if self.world > 1 and config.sync_batch_norm:
            self.model = distributed.convert_batch_norm(self.model, device)
        # On the CPU, channels_last is off by default: with torch 2.14 its oneDNN backward makes a resume inexact
        # (another reduction order) and can spin forever on narrow layers.
        channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(device, memory_format=self.memory_format)
        self.fast = config.train_step == "fast"
        self.optimizer = build_optimizer(self.model, config.optim, config.batch_size, foreach=self.fast)
        self.autocast, self.scaler = mixed_precision(device, config.precision)
        self.augment_generator = torch.Generator().manual_seed(config.seed * 1_000_003 + distributed.rank())
        self.two_views = TwoViews(simclr_augmentation(config.augment, self.augment_generator), one_pass=self.fast)
        tune_backends(device)

        self.resumed = resume
        if resume:
            self._restore()
        self._plan_schedule()
        self.step_timer = StepTimer(self.step, device) if self.config.time_budget and not self.config.plan.events \
            else None  # a budget is planned once, in the run's first call
        self.monitor = KnnMonitor(config, device) if config.knn_every and self.is_main else None

        self.network: nn.Module = self.model
        if self.world > 1:
            self.network = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda"
                                                   else None)
        self.step_compiled: int | None = None
        self.objective: nn.Module = ContrastiveObjective(self.network, config.temperature)
        self.compiling = device.type == "cuda" if config.compile is None else config.compile
        if self.compiling:
            self.compile_cache = compile_cache_path(device)
            load_compile_cache(self.compile_cache)
            self.objective = torch.compile(self.objective, dynamic=False, mode=config.compile_mode)

    def _start_from(self, source: Path) -> dict:
        """Load f (and g, when the source has one of the same shape) from a run, a checkpoint or an exported
        model; returns what the run started from (recorded in its checkpoints)."""
        from simclr.finetune.start import open_pretrained, prepare_onnx_start

        pretrained = open_pretrained(source)
        if pretrained.kind == "onnx":
            prepare_onnx_start(pretrained, sample_images(self.dataset, pretrained.image_size))
        self.model.encoder.load_state_dict(pretrained.encoder.state_dict())
        head = pretrained.head_state
        fits = head is not None and {k: v.shape for k, v in head.items()} == {
            k: v.shape for k, v in self.model.head.state_dict().items()}
        if fits:
            self.model.head.load_state_dict(head)
        log.info("starting from %s (%s, sha256 %s): f loaded, g %s", pretrained.path, pretrained.kind,
                 pretrained.sha256[:12], "loaded" if fits else "new")
        return {**pretrained.as_dict(), "head_loaded": fits}

    def _restore(self) -> None:
        state = load_checkpoint(self.checkpoint_path)
        self.model.encoder.load_state_dict(state["encoder"])
        self.model.head.load_state_dict(state["head"])
        self.restore_loop_state(state)
        self.init_source, self.data_fingerprint = state.get("init"), state.get("data_fingerprint")
        saved_epochs = state["config"]["epochs"]
        if self.config.epochs > saved_epochs:
            self.config = extended_plan(self.config, saved_epochs, self.steps_per_epoch, self.step)
            log.info(self.config.plan.events[-1])

    def _plan_schedule(self) -> None:
        """The learning rate of every step and where this call stops, from the config's plan."""
        total, warmup = schedule_length(self.config, self.steps_per_epoch)
        self.schedule = warmup_cosine(peak_learning_rate(self.config.optim, self.config.batch_size), total, warmup)
        self.max_steps = min(total, self.config.max_steps or total)

    def _follow_budget(self) -> None:
        """Once the first steps are timed, fix the schedule so that it ends within --time-budget."""
        seconds = self.step_timer.seconds_per_step(self.step)
        elapsed = time.monotonic() - self.clock_started
        if seconds is None and elapsed > self.config.time_budget / 2:  # steps too slow to wait for the window
            seconds = self.step_timer.mean_so_far(self.step)
        if seconds is None:
            return
        seconds = distributed.from_main_rank(seconds, self.device)
        self.step_timer = None
        self.config = budget_plan(self.config, self.steps_per_epoch, self.step, elapsed, seconds)
        self._plan_schedule()
        log.info(self.config.plan.events[-1])
        if self.is_main:
            atomic_write_text(self.out / CONFIG_NAME, self.config.to_json())
        self.record({"event": "plan", "step": self.step, **dataclasses.asdict(self.config.plan),
                     "epochs": self.config.epochs})

    def save(self, epoch: int) -> None:
        """Save everything needed to continue exactly from here. Collective: every rank calls it, rank 0 writes."""
        loop_state = self.loop_state(epoch)
        if self.is_main:
            save_checkpoint(self.checkpoint_path, {"config": dataclasses.asdict(self.config),
                                                   "encoder": self.model.encoder.state_dict(),
                                                   "head": self.model.head.state_dict(),
                                                   "data_fingerprint": self.data_fingerprint,
                                                   "init": self.init_source, **loop_state})

    def train_step(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a uint8 batch [n, 3, H, W]; returns (loss, contrastive accuracy) as 0-d tensors on
        the device (the fast step never waits for the device; the reference step reads the loss at once)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule[self.step]
        started = time.monotonic() if self.compiling and self.step_compiled is None else None
        if self.compiling and self.config.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are free to reuse
        # The regions name the step's phases in a torch.profiler trace (bench/profile_step.py); free otherwise.
        with record_function("augment"):
            views = self.two_views(images.to(self.device, non_blocking=True))
        with record_function("forward"), self.autocast:
            loss, accuracy = self.objective(views.contiguous(memory_format=self.memory_format))
        with record_function("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            # Each rank holds its share of the full gradient and DDP averages: scale by the world size to undo that.
            self.scaler.scale(loss * self.world).backward()
        if not self.fast:
            self.check_finite(loss.item())
        with record_function("optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.step += 1
        if started is not None:
            self._compiled(time.monotonic() - started)
        if self.step_timer is not None:
            self._follow_budget()
        return loss.detach().clone(), accuracy.clone()  # copies: CUDA graphs reuse their outputs' memory

    def _compiled(self, seconds: float) -> None:
        """After the first compiled step: say what compiling cost, and keep Inductor's kernels for the next run."""
        self.step_compiled = self.step
        log.info("torch.compile: the first step took %.1f s (compiling f, g and the loss)", seconds)
        if self.is_main:
            save_compile_cache(self.compile_cache)

    def run(self) -> TrainResult:
        """Train to the planned end (--epochs, --time-budget) or --max-steps, writing config.json, metrics,
        checkpoints and the curve PNG. A run with nothing left to do trains nothing and writes nothing."""
        started, first_step = time.monotonic(), self.step
        values, images_per_second = (math.nan, math.nan), 0.0
        if self.step < self.max_steps:
            values, images_per_second = self.run_epochs()
        loss, accuracy = values
        return TrainResult(out=self.out, steps=self.step, steps_run=self.step - first_step,
                           planned_steps=len(self.schedule), epochs_completed=self.step // self.steps_per_epoch,
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
