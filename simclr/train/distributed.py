"""torch.distributed helpers that fall back to one process, plus the global batch norm used on CPU."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def setup(device: torch.device) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def gather_with_own_gradient(local: torch.Tensor) -> torch.Tensor:
    """All ranks' [n, D] tensors concatenated in rank order to [world*n, D].

    Gradients flow only into this rank's own slice. The loss over the whole gathered batch is then the same
    number on every rank, and each rank's parameter gradient is its own share of the full gradient; scale the
    loss by world_size() before backward so DDP's averaging gives the full gradient.
    """
    if not is_distributed():
        return local
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local.detach().contiguous())
    parts[rank()] = local
    return torch.cat(parts)


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag made true on every rank when it is true on any rank (so that all ranks act together)."""
    if not is_distributed():
        return list(flags)
    values = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def from_main_rank(value: float, device: torch.device) -> float:
    """Rank 0's `value` on every rank (so that all ranks follow one plan)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is also a sum over ranks (each rank's output feeds every rank's loss)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics span the batches of all ranks, for any device and backend.

    torch's SyncBatchNorm runs only on GPUs; this one all-reduces the per-channel sum, sum of squares and
    count through a differentiable all_reduce, so it also works with gloo on the CPU.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        local_count = input.numel() // input.shape[1]
        # Statistics in float32 whatever the autocast dtype: sums of thousands of bf16 values lose most digits, and
        # the running buffers are float32.
        values = input.float()
        stats = torch.cat([values.sum(dims), (values * values).sum(dims),
                           torch.tensor([float(local_count)], device=input.device)])
        stats = _AllReduceSum.apply(stats)
        channels = input.shape[1]
        count = stats[-1]
        mean = stats[:channels] / count
        var = (stats[channels:2 * channels] / count - mean * mean).clamp_min(0.0)
        shape = [1, channels] + [1] * (input.dim() - 2)
        output = (values - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        output = output.to(input.dtype)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                unbiased = var * (count / (count - 1).clamp_min(1.0))
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
        return output


def convert_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm with its global (cross-rank) version: torch's SyncBatchNorm on CUDA, else ours."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global(module)


def _to_global(module: nn.Module) -> nn.Module:
    converted = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        converted.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        converted.add_module(name, _to_global(child))
    return converted
