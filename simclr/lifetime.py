"""Child processes that end with their parent: a `kill -9` of a simclr command leaves no server or decoder behind."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child process: ask Linux to send `sig` when the parent dies (a no-op elsewhere). Use as preexec_fn or
    as a process pool's initializer."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
