"""LARS (You et al. 2017, as in SimCLR's reference code), parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from simclr.train.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-tensor step is scaled by the trust ratio eta * ||w|| / ||g + wd * w||.

    A parameter group with `exclude=True` (biases and norm parameters) gets neither weight decay nor the
    trust ratio: a plain momentum step. The momentum buffer accumulates lr-scaled updates, as in SimCLR's code.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, trust_clip: bool = False, foreach: bool = True) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"LARS: invalid lr={lr}, momentum={momentum}, weight_decay={weight_decay} "
                             f"or trust_coefficient={trust_coefficient}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient, "trust_clip": trust_clip, "exclude": False}
        super().__init__(params, defaults)
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if params:
                (self._group_step if self.foreach else self._loop_step)(group, params)
        return loss

    def _momentum_buffers(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        for param in params:
            if "momentum_buffer" not in self.state[param]:
                self.state[param]["momentum_buffer"] = torch.zeros_like(param)
        return [self.state[param]["momentum_buffer"] for param in params]

    def _group_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """The group's update with multi-tensor (foreach) kernels: a handful of launches, not a few per tensor."""
        updates = [param.grad for param in params]
        if not group["exclude"]:
            updates = torch._foreach_add(updates, params, alpha=group["weight_decay"])
            weight_norms = torch.stack(torch._foreach_norm(params))
            update_norms = torch.stack(torch._foreach_norm(updates))
            ratios = torch.where((weight_norms > 0) & (update_norms > 0),
                                 group["trust_coefficient"] * weight_norms / update_norms, 1.0)
            if group["trust_clip"] and group["lr"] > 0:
                ratios = torch.clamp(ratios / group["lr"], max=1.0)
            torch._foreach_mul_(updates, list(ratios.unbind()))
        buffers = self._momentum_buffers(params)
        torch._foreach_mul_(buffers, group["momentum"])
        torch._foreach_add_(buffers, updates, alpha=group["lr"])
        torch._foreach_sub_(params, buffers)

    def _loop_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """The same update one tensor at a time (the reference path)."""
        for param, buffer in zip(params, self._momentum_buffers(params), strict=True):
            update = param.grad
            if not group["exclude"]:
                update = update.add(param, alpha=group["weight_decay"])
                ratio = trust_ratio(param, update, group["trust_coefficient"])
                if group["trust_clip"] and group["lr"] > 0:  # the layer's rate min(ratio, lr), as LARC's clip
                    ratio = torch.clamp(ratio / group["lr"], max=1.0)
                update = update.mul(ratio)
            buffer.mul_(group["momentum"]).add_(update, alpha=group["lr"])
            param.sub_(buffer)


def trust_ratio(param: torch.Tensor, update: torch.Tensor, trust_coefficient: float) -> torch.Tensor:
    """eta * ||w|| / ||update||, or 1 where either norm is zero (a scalar tensor)."""
    weight_norm = torch.linalg.vector_norm(param)
    update_norm = torch.linalg.vector_norm(update)
    ratio = trust_coefficient * weight_norm / update_norm
    return torch.where((weight_norm > 0) & (update_norm > 0), ratio, torch.ones_like(ratio))


def parameter_groups(model: nn.Module, unadapted: nn.Module | None = None) -> list[dict]:
    """Two groups: weights (decayed, adapted) and biases + norm parameters + the parameters of `unadapted`
    (`exclude`: neither)."""
    plain = {id(param) for param in unadapted.parameters()} if unadapted is not None else set()
    regular, excluded = [], []
    for param in model.parameters():
        if param.requires_grad:
            (excluded if param.ndim <= 1 or id(param) in plain else regular).append(param)
    return [{"params": regular, "exclude": False}, {"params": excluded, "exclude": True, "weight_decay": 0.0}]


def peak_learning_rate(config: OptimConfig, batch_size: int) -> float:
    """base_lr x batch/256 (linear) or base_lr x sqrt(batch/256) (sqrt)."""
    ratio = batch_size / 256
    return config.base_lr * (math.sqrt(ratio) if config.lr_scaling == "sqrt" else ratio)


def build_optimizer(model: nn.Module, config: OptimConfig, batch_size: int,
                    unadapted: nn.Module | None = None, foreach: bool = True) -> torch.optim.Optimizer:
    """LARS, SGD (momentum) or AdamW over `parameter_groups(model, unadapted)`, at the peak learning rate;
    `foreach`: multi-tensor kernels (False: one tensor at a time, the reference path)."""
    groups = parameter_groups(model, unadapted)
    lr = peak_learning_rate(config, batch_size)
    if config.optimizer == "lars":
        return LARS(groups, lr, config.momentum, config.weight_decay, config.trust_coefficient, config.trust_clip,
                    foreach)
    for group in groups:
        group.pop("exclude")
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               nesterov=config.nesterov, foreach=foreach)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr, weight_decay=config.weight_decay, foreach=foreach)
    raise ValueError(f"--optimizer {config.optimizer!r}: choose one of lars, sgd, adamw")


def warmup_cosine(peak_lr: float, total_steps: int, warmup_steps: int) -> list[float]:
    """Per-step learning rates: linear warm-up to `peak_lr` over `warmup_steps`, then cosine decay to 0."""
    if total_steps < 1:
        raise ValueError(f"total_steps {total_steps}: must be at least 1")
    warmup_steps = min(warmup_steps, total_steps)
    schedule = [peak_lr * (step + 1) / warmup_steps for step in range(warmup_steps)]
    decay_steps = total_steps - warmup_steps
    schedule += [0.5 * peak_lr * (1 + math.cos(math.pi * step / decay_steps)) for step in range(decay_steps)]
    assert len(schedule) == total_steps  # internal invariant, not user input
    return schedule
