"""Writing files all or nothing (simclr/atomic.py): what a writer killed mid-write leaves is removed by the next."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from simclr.atomic import atomic_write_bytes

KILLED_WRITER = """
import os, signal, sys
from simclr.atomic import atomic_write_bytes
def write(file):
    file.write(bytes(1 << 20))
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or kill -9 would, mid-write
atomic_write_bytes(sys.argv[1], write)
"""


def test_a_killed_writers_temporary_is_removed_by_the_next_write_and_no_one_elses(tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], timeout=60)
    assert killed.returncode == -signal.SIGKILL
    (left,) = tmp_path.glob(".feats.npy.*.tmp")
    assert left.stat().st_size == 1 << 20 and not out.exists()
    live = tmp_path / f".feats.npy.{socket.gethostname()}.{os.getpid()}-live.tmp"  # a writer still running
    elsewhere = tmp_path / ".feats.npy.another-host.1-abcd.tmp"  # a writer on another machine of a shared folder
    for other in (live, elsewhere):
        other.write_bytes(b"in progress")
    atomic_write_bytes(out, lambda file: file.write(b"done"))
    assert out.read_bytes() == b"done" and not left.exists()
    assert sorted(tmp_path.glob(".feats.npy.*.tmp")) == sorted([live, elsewhere])
