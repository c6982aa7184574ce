"""One writer per output: a command that writes an output holds an exclusive lock on it while it runs, so that a
second one (a background job started twice, a requeued task) is refused in one line naming the holder, instead of
both writing the same files. The lock is the kernel's (flock on OUTPUT.lock): it goes with the process, so the
lock of a process that died (kill -9, a lost node) is simply taken over."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path


class OutputBusyError(ValueError):
    """Another process is writing the same output."""


def lock_path(output: Path) -> Path:
    """feats.npy -> feats.npy.lock; runs/a -> runs/a.lock"""
    output = Path(output)
    return output.with_name(f"{output.name}.lock")


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold the lock on `output` for the block; OutputBusyError names the process (PID and host) that holds it."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(descriptor)
            raise OutputBusyError(f"{output}: being written by {holder} (its lock: {path}); wait for it to end, "
                                  "or stop it") from None
        # The holder before us may have removed the file we opened: the lock counts only on the file at `path`.
        if _same_file(descriptor, path):
            break
        os.close(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(descriptor)


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
