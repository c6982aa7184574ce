"""How long a run's learning-rate schedule is: --epochs, a --time-budget fixed from the rate of the first steps, or
a longer --epochs given on resume (the cosine re-planned to the new end)."""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from simclr.progress import significant
from simclr.train.config import SchedulePlan, TrainConfig

MEASURE_AFTER = 5  # steps of this call left out of the rate (cudnn autotuning, compilation, first batches)
MEASURE_STEPS = 20  # steps timed after those
BUDGET_RESERVE = 0.05  # of the budget, kept for the last save and what follows it (export, copying the run back)
MAX_WARMUP_FRACTION = 0.1  # a budget that shortens the run shortens its warm-up to at most this part of it


def schedule_length(config: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(total steps, warm-up steps) of the run's schedule."""
    total = config.plan.total_steps or config.epochs * steps_per_epoch
    warmup = config.plan.warmup_steps
    if warmup is None:
        warmup = round(config.optim.warmup_epochs * steps_per_epoch)
    return total, min(warmup, total)


def budget_plan(config: TrainConfig, steps_per_epoch: int, step: int, elapsed: float, step_seconds: float
                ) -> TrainConfig:
    """`config` with the schedule that ends before `config.time_budget` seconds, `elapsed` of them spent and
    `step` steps done, at `step_seconds` a step (epoch-end work included when the measured steps crossed one).

    The run keeps whole epochs when at least one fits, never outgrows --epochs, and keeps BUDGET_RESERVE of the
    budget for its last save; the warm-up shrinks to at most a tenth of a shortened run."""
    reserve = BUDGET_RESERVE * config.time_budget
    steps_left = max(0, math.floor((config.time_budget - elapsed - reserve) / step_seconds))
    total = min(config.epochs * steps_per_epoch, step + steps_left)
    if total >= steps_per_epoch:
        total -= total % steps_per_epoch
    total = max(total, step)
    _, warmup = schedule_length(config, steps_per_epoch)
    if total < config.epochs * steps_per_epoch:
        warmup = min(warmup, max(step, math.floor(MAX_WARMUP_FRACTION * total)))
    pairs_per_second = config.batch_size / step_seconds
    event = (f"step {step}: --time-budget {config.time_budget:g} s, {elapsed:.0f} s spent, "
             f"{significant(pairs_per_second)} pairs/s measured -> {total} steps ({total / steps_per_epoch:.4g} "
             f"epochs), warm-up {warmup} steps")
    plan = SchedulePlan(total_steps=total, warmup_steps=warmup, pairs_per_second=pairs_per_second,
                        events=(*config.plan.events, event))
    return dataclasses.replace(config, epochs=max(1, math.ceil(total / steps_per_epoch)), plan=plan)


def extended_plan(config: TrainConfig, saved_epochs: int, steps_per_epoch: int, step: int) -> TrainConfig:
    """`config` (a resumed run given more epochs than its saved `saved_epochs`) with the cosine re-planned to end
    at the new last step; the steps already done keep their rates."""
    total = config.epochs * steps_per_epoch
    event = (f"step {step}: --epochs {saved_epochs} -> {config.epochs} on resume: the cosine re-planned to end at "
             f"step {total}")
    plan = dataclasses.replace(config.plan, total_steps=None, events=(*config.plan.events, event))
    return dataclasses.replace(config, plan=plan)


class StepTimer:
    """Times steps `after`+1 .. `after`+`steps` of one call (MEASURE_AFTER and MEASURE_STEPS unless given),
    synchronising the device at both ends so that queued GPU work is counted."""

    def __init__(self, first_step: int, device: torch.device, after: int = MEASURE_AFTER,
                 steps: int = MEASURE_STEPS) -> None:
        self.first_step, self.created = first_step, time.monotonic()
        self.start_step = first_step + after
        self.end_step = self.start_step + steps
        self.measured = steps
        self.device = device
        self.started: float | None = None

    def seconds_per_step(self, step: int) -> float | None:
        """Call after every step: the mean seconds a step once the window has closed (at that step only)."""
        if step == self.start_step:
            self._synchronize()
            self.started = time.monotonic()
        elif step == self.end_step and self.started is not None:
            self._synchronize()
            return (time.monotonic() - self.started) / self.measured
        return None

    def mean_so_far(self, step: int) -> float:
        """Seconds a step over every step of this call (for steps too slow to wait for the window)."""
        self._synchronize()
        return (time.monotonic() - self.created) / max(1, step - self.first_step)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
