"""Processes that end with their parent, and the folders that killed processes leave behind."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Resolved once here: after a fork, the child must not load libraries (preexec_fn runs between fork and exec).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child process: ask Linux to send `sig` when the parent dies (a no-op elsewhere). Use as preexec_fn or
    as a process pool's initializer. Linux ties this to the parent *thread* that started the child: start children
    from a thread that lives as long as they should."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def remove_orphaned(folders) -> None:
    """Remove the folders among `folders` whose name holds the pid of a process that no longer exists
    ("<prefix>-<pid>-<random>") and that belong to this user; folders that vanish meanwhile are fine."""
    for folder in folders:
        pid = Path(folder).name.split("-")[-2]
        with contextlib.suppress(OSError):
            if pid.isdigit() and Path(folder).stat().st_uid == os.getuid() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(folder, ignore_errors=True)


class StopSignal:
    """The signal that stopped a `stopped_by_signals` block (SIGINT until one arrives)."""

    def __init__(self) -> None:
        self.signal = signal.SIGINT

    @property
    def name(self) -> str:
        return self.signal.name

    @property
    def value(self) -> int:
        return int(self.signal)


@contextlib.contextmanager
def stopped_by_signals(signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)):
    """Within the block, each of `signals` raises KeyboardInterrupt in the main thread (SIGTERM would otherwise end
    the process without a word, and without closing what it writes); the StopSignal yielded says which came."""
    stopped = StopSignal()

    def interrupt(number, _frame) -> None:
        stopped.signal = signal.Signals(number)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
