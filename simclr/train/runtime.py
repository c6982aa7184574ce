"""Where and how a run executes: the device it trains on, its precision and backend settings, Inductor's cache,
the signals that stop it cleanly, the save timer."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from pathlib import Path

import torch

from simclr.atomic import atomic_write_bytes

log = logging.getLogger("simclr")
COMPILE_CACHE_ENVIRONMENT = "SIMCLR_COMPILE_CACHE"


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so that bf16 autocast is faster than fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(device: torch.device, precision: str) -> str:
    """What --precision means on `device`: auto is bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16()) else "fp32"
    return precision


def tune_backends(device: torch.device) -> None:
    """Backend settings for fixed shapes: cuDNN picks the fastest kernels once (every step has the same shapes)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def compile_cache_path(device: torch.device) -> Path:
    """Inductor's compiled kernels for this torch and device: $SIMCLR_COMPILE_CACHE, else under ~/.cache/simclr."""
    if os.environ.get(COMPILE_CACHE_ENVIRONMENT):
        return Path(os.environ[COMPILE_CACHE_ENVIRONMENT])
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    name = re.sub(r"[^A-Za-z0-9.]+", "-", f"inductor-torch{torch.__version__}-{hardware}")
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "simclr"
    return root / f"{name}.bin"


def load_compile_cache(path: Path) -> None:
    """Give Inductor the kernels an earlier run saved at `path` (nothing when there are none or they do not load)."""
    if not path.is_file():
        return
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
        log.info("torch.compile: loaded Inductor's cache from %s", path)
    except Exception as error:  # a cache from another build is only a slower start
        log.warning("torch.compile: %s could not be loaded (%s); compiling afresh", path, error)


def save_compile_cache(path: Path) -> None:
    """Save what Inductor compiled in this process to `path`, for the next run on this machine."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return
    atomic_write_bytes(path, lambda file: file.write(artifacts[0]))
    log.info("torch.compile: saved Inductor's cache to %s (%.1f MB)", path, len(artifacts[0]) / 1e6)


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
