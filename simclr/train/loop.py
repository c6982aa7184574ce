"""The training run: data -> two views -> f -> g -> NT-Xent -> optimiser, with checkpoints, metrics and curves."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from simclr.data.datasets import TORCHVISION_DATASETS, ImageFiles, InMemoryImages, labelled_splits, training_images
from simclr.evaluate.knn import knn_top1
from simclr.train import distributed
from simclr.train.augment import TwoViews, simclr_augmentation
from simclr.train.checkpoint import CHECKPOINT_NAME, CONFIG_NAME, atomic_write_text, load_checkpoint, save_checkpoint
from simclr.train.config import TrainConfig, replace
from simclr.train.curves import plot_training_curves
from simclr.train.loss import contrastive_accuracy, nt_xent
from simclr.train.model import SimCLRModel
from simclr.train.optim import build_optimizer, peak_learning_rate, warmup_cosine

log = logging.getLogger("simclr")

METRICS_NAME = "metrics.jsonl"
CURVE_NAME = "training_curves.png"
# What --resume may change: how the run is driven, not what it computes.
RESUMABLE_OVERRIDES = ("max_steps", "workers", "save_every_minutes", "log_every", "knn_every", "device")


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, unreadable data); the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped the run after saving a checkpoint it can resume from."""


@dataclass(frozen=True)
class TrainResult:
    out: Path
    steps: int
    epochs_completed: int
    loss: float
    contrastive_accuracy: float
    images_per_second: float
    wall_seconds: float


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def run_config(out: Path, config: TrainConfig | None, resume: bool, overrides: dict) -> TrainConfig:
    """The config a run in `out` uses: `config` for a new run, the saved one (plus driving overrides) on resume.

    Refuses to start a new run over an existing one, and to resume where nothing was saved.
    """
    checkpoint = Path(out) / CHECKPOINT_NAME
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: {checkpoint} does not exist (nothing to resume in --out {out})")
        saved = TrainConfig.from_dict(load_checkpoint(checkpoint)["config"])
        return replace(saved, {key: overrides.get(key) for key in RESUMABLE_OVERRIDES})
    if checkpoint.exists():
        raise FileExistsError(f"--out {out} already holds a run ({checkpoint}); pass --resume to continue it "
                              "or choose another --out")
    if config is None:
        raise ValueError("a new run needs a config")
    return config


def contrastive_step(model: nn.Module, view1: torch.Tensor, view2: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, contrastive accuracy) of one batch of pairs, over the global batch of all ranks.

    view1, view2: [n, 3, S, S] this rank's two views. Both views go through f and g in one forward pass (so batch
    norm sees all 2n images); the projections of all ranks are gathered, gradients flowing into this rank's own.
    """
    count = len(view1)
    z = model(torch.cat([view1, view2]))  # [2n, out]
    z1 = distributed.gather_with_own_gradient(z[:count])  # [N, out], N = global batch
    z2 = distributed.gather_with_own_gradient(z[count:])
    return nt_xent(z1, z2, temperature), contrastive_accuracy(z1, z2)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle per epoch, equal shares per rank) that can skip its first indices."""

    def __init__(self, dataset_size: int, seed: int, epoch: int, skip: int = 0) -> None:
        super().__init__(range(dataset_size), num_replicas=distributed.world_size(), rank=distributed.rank(),
                         shuffle=True, seed=seed, drop_last=True)
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])


def collate_readable(items: list[torch.Tensor | None]) -> torch.Tensor:
    """Stack the decoded images of a batch; slots of unreadable files are refilled with readable images of the
    same batch so every rank keeps the same batch size. A batch with nothing readable is returned empty."""
    readable = [item for item in items if item is not None]
    if not readable:
        return torch.empty(0, dtype=torch.uint8)
    return torch.stack([readable[i % len(readable)] for i in range(len(items))])


def epoch_batches(dataset: ImageFiles | InMemoryImages, sampler: ResumableSampler, batch_size: int, workers: int,
                  seed: int, pin_memory: bool) -> Iterator[torch.Tensor]:
    """uint8 [batch_size, 3, H, W] batches of one epoch (an incomplete last batch is dropped)."""
    if isinstance(dataset, InMemoryImages):
        indices = torch.tensor(list(sampler), dtype=torch.long)
        for start in range(0, len(indices) - batch_size + 1, batch_size):
            yield dataset.images[indices[start:start + batch_size]]
        return
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                        collate_fn=collate_readable, pin_memory=pin_memory,
                        generator=torch.Generator().manual_seed(seed))
    yield from loader


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (restores the old handlers on exit)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """metrics.jsonl: one JSON object a line. On resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, keep_through_step: int | None) -> None:
        self.path = path
        if keep_through_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_through_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif keep_through_step is None:
            path.write_text("")

    def write(self, record: dict) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


class KnnMonitor:
    """kNN top-1 of the current encoder on a labelled set (train subset as memory, test subset as queries)."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        source = config.knn_data or config.data
        if source not in TORCHVISION_DATASETS and not (Path(source) / "train").is_dir():
            raise ValueError(f"--knn-every needs labelled data: --knn-data cifar10|cifar100|stl10 or a folder with "
                             f"train/ and test/ class folders (got {source})")
        train, test = labelled_splits(source, config.data_root, config.augment.image_size)
        self.train = train.subset(config.knn_samples, config.seed)
        self.test = test.subset(max(1, config.knn_samples // 5), config.seed)
        self.num_classes = len(train.classes) or int(train.labels.max()) + 1
        self.image_size = config.augment.image_size
        self.device = device

    @torch.no_grad()
    def _features(self, encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        rows = []
        for start in range(0, len(images), 512):
            batch = images[start:start + 512].to(self.device).float() / 255.0
            if batch.shape[-1] != self.image_size:
                batch = F.interpolate(batch, size=self.image_size, mode="bilinear", antialias=True)
            rows.append(encoder.features(batch).float().cpu())
        return torch.cat(rows)

    def __call__(self, encoder: nn.Module) -> float:
        was_training = encoder.training
        encoder.eval()
        try:
            return knn_top1(self._features(encoder, self.train.images), self.train.labels,
                            self._features(encoder, self.test.images), self.test.labels, self.num_classes)
        finally:
            encoder.train(was_training)


def train(config: TrainConfig, out: Path, resume: bool = False) -> TrainResult:
    """Run (or resume) SimCLR pre-training; writes last.pt, config.json, metrics.jsonl and the curve PNG to `out`.

    Under torchrun each process trains on its share of every global batch; only rank 0 writes files.
    """
    device = resolve_device(config.device)
    distributed.setup(device)
    try:
        return _train(config, Path(out), resume, device)
    finally:
        distributed.teardown()


def _train(config: TrainConfig, out: Path, resume: bool, device: torch.device) -> TrainResult:
    is_main = distributed.rank() == 0
    world = distributed.world_size()
    if config.batch_size % world:
        raise ValueError(f"--batch-size {config.batch_size}: must divide evenly across {world} processes")
    local_batch = config.batch_size // world

    # --- data ---
    dataset = training_images(config.data, Path(config.data_root) if config.data_root else None, config.decode_size)
    steps_per_epoch = len(ResumableSampler(len(dataset), config.seed, 0)) // local_batch
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {config.batch_size} is larger than the {len(dataset)} images of {config.data}")
    total_steps = steps_per_epoch * config.epochs

    # --- model, optimiser, schedule ---
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = SimCLRModel(config.model)
    if world > 1 and config.sync_batch_norm:
        model = distributed.convert_batch_norm(model, device)
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(model, config.optim, config.batch_size)
    schedule = warmup_cosine(peak_learning_rate(config.optim, config.batch_size), total_steps,
                             round(config.optim.warmup_epochs * steps_per_epoch))
    precision = ("bf16" if device.type == "cuda" else "fp32") if config.precision == "auto" else config.precision
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    augment_generator = torch.Generator().manual_seed(config.seed * 1_000_003 + distributed.rank())
    two_views = TwoViews(simclr_augmentation(config.augment, augment_generator))

    # --- resume ---
    step, start_epoch = 0, 0
    checkpoint_path = out / CHECKPOINT_NAME
    if resume:
        state = load_checkpoint(checkpoint_path)
        model.encoder.load_state_dict(state["encoder"])
        model.head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, start_epoch = state["step"], state["epoch"]
        saved_states = state["rng"]["augment"]
        augment_generator.set_state(saved_states[distributed.rank() % len(saved_states)])
        torch.set_rng_state(state["rng"]["torch"])
        log.info("resuming %s at epoch %d, step %d", out, start_epoch + 1, step)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CONFIG_NAME, config.to_json())
    metrics = MetricsLog(out / METRICS_NAME, keep_through_step=step if resume else None) if is_main else None
    monitor = KnnMonitor(config, device) if config.knn_every and is_main else None

    network: nn.Module = model
    if world > 1:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        network = torch.compile(network)

    def checkpoint(epoch: int) -> None:
        """Rank 0 saves everything needed to continue exactly from here (all ranks' augmentation RNGs)."""
        augment_states = _gather_generator_states(augment_generator)
        if not is_main:
            return
        save_checkpoint(checkpoint_path, {
            "config": dataclasses.asdict(config),
            "encoder": model.encoder.state_dict(),
            "head": model.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "rng": {"augment": augment_states, "torch": torch.get_rng_state()},
        })

    # --- loop ---
    max_steps = min(total_steps, config.max_steps or total_steps)
    started = last_save = time.monotonic()
    images_seen, loss_value, accuracy_value = 0, math.nan, math.nan
    epoch = start_epoch
    with StopSignals() as signals:
        for epoch in range(start_epoch, config.epochs):
            if step >= max_steps:
                break
            skip = step - epoch * steps_per_epoch
            sampler = ResumableSampler(len(dataset), config.seed, epoch, skip * local_batch)
            batches = epoch_batches(dataset, sampler, local_batch, config.workers, config.seed + epoch,
                                    pin_memory=device.type == "cuda")
            with tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not is_main, dynamic_ncols=True, leave=True) as bar:
                epoch_losses, epoch_accuracies = [], []
                window_start, window_images = time.monotonic(), 0
                for images in batches:
                    if images.numel() == 0:
                        raise TrainingError(f"{config.data}: no image of a batch of {local_batch} could be decoded "
                                            "(see the warnings above)")
                    for group in optimizer.param_groups:
                        group["lr"] = schedule[step]
                    view1, view2 = two_views(images.to(device, non_blocking=True))
                    view1 = view1.contiguous(memory_format=memory_format)
                    view2 = view2.contiguous(memory_format=memory_format)
                    with autocast:
                        loss, accuracy = contrastive_step(network, view1, view2, config.temperature)
                    optimizer.zero_grad(set_to_none=True)
                    # Each rank holds its share of the full gradient; DDP averages, so undo its 1/world.
                    scaler.scale(loss * world).backward()
                    loss_value, accuracy_value = loss.item(), accuracy.item()
                    if not math.isfinite(loss_value):
                        raise TrainingError(
                            f"loss became {loss_value} at step {step + 1} (epoch {epoch + 1}); stopped. "
                            f"{checkpoint_path} keeps the last good state; lower --base-lr or use --precision fp32")
                    scaler.step(optimizer)
                    scaler.update()
                    step += 1
                    images_seen += config.batch_size
                    window_images += config.batch_size
                    epoch_losses.append(loss_value)
                    epoch_accuracies.append(accuracy_value)
                    bar.update(1)
                    if step % config.log_every == 0 or step == max_steps:
                        rate = window_images / max(time.monotonic() - window_start, 1e-9)
                        bar.set_postfix(loss=f"{loss_value:.4f}", acc=f"{accuracy_value:.3f}",
                                        lr=f"{schedule[step - 1]:.3g}", img_s=f"{rate:.0f}")
                        if metrics:
                            metrics.write({"event": "step", "step": step, "epoch": epoch + 1, "loss": loss_value,
                                           "contrastive_accuracy": accuracy_value, "lr": schedule[step - 1],
                                           "images_per_second": rate})
                        window_start, window_images = time.monotonic(), 0
                    # Ranks agree on stopping and on timed saves, since saving gathers from every rank.
                    timer_due = bool(config.save_every_minutes) and (
                        time.monotonic() - last_save >= 60 * config.save_every_minutes)
                    stop, timer_due = distributed.any_rank([signals.received is not None, timer_due], device)
                    if stop:
                        checkpoint(epoch)
                        raise TrainingInterrupted(f"stopped by signal after step {step}; saved {checkpoint_path}; "
                                                  "continue with --resume")
                    if step >= max_steps:
                        break
                    if timer_due:
                        checkpoint(epoch)
                        last_save = time.monotonic()
            if step >= max_steps and step < (epoch + 1) * steps_per_epoch:
                checkpoint(epoch)  # stopped mid-epoch by --max-steps
                break
            checkpoint(epoch + 1)
            last_save = time.monotonic()
            record = {"event": "epoch", "step": step, "epoch": epoch + 1,
                      "loss": sum(epoch_losses) / max(len(epoch_losses), 1),
                      "contrastive_accuracy": sum(epoch_accuracies) / max(len(epoch_accuracies), 1)}
            if monitor and (epoch + 1) % config.knn_every == 0:
                record["knn_top1"] = monitor(model.encoder)
                log.info("epoch %d: kNN top-1 %.2f%%", epoch + 1, 100 * record["knn_top1"])
            if metrics:
                metrics.write(record)
    wall = time.monotonic() - started
    if is_main:
        plot_training_curves(out / METRICS_NAME, out / CURVE_NAME)
    epochs_completed = step // steps_per_epoch
    return TrainResult(out, step, epochs_completed, loss_value, accuracy_value, images_seen / max(wall, 1e-9), wall)


def _gather_generator_states(generator: torch.Generator) -> list[torch.Tensor]:
    """Every rank's generator state, in rank order (collective: all ranks must call it)."""
    state = generator.get_state()
    if not distributed.is_distributed():
        return [state]
    states: list = [None] * distributed.world_size()
    torch.distributed.all_gather_object(states, state)
    return states
