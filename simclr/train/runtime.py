"""Where and how a run executes: the device it trains on, the signals that stop it cleanly, the save timer."""

from __future__ import annotations

import contextlib
import signal
import time

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def resolve_precision(device: torch.device, precision: str) -> str:
    """What --precision means on `device`: auto is bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def mixed_precision(device: torch.device, precision: str) -> tuple[contextlib.AbstractContextManager,
                                                                   torch.amp.GradScaler]:
    """The autocast context and gradient scaler of --precision (auto: bf16 on CUDA, fp32 on CPU; fp16 scales)."""
    precision = resolve_precision(device, precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    return autocast, torch.amp.GradScaler(device.type, enabled=precision == "fp16")


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


class SaveTimer:
    """Due every `minutes` since the last restart (never when `minutes` is 0)."""

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self.restart()

    def restart(self) -> None:
        self.started = time.monotonic()

    def due(self) -> bool:
        return bool(self.minutes) and time.monotonic() - self.started >= 60 * self.minutes
