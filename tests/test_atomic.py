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


HOLDER = """
import sys, time
from simclr.locks import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_index_and_train_outputs_have_one_writer(image_folder: Path, tmp_path: Path) -> None:
    import numpy as np
    from typer.testing import CliRunner

    from simclr.cli.app import app

    np.save(tmp_path / "feats.npy", np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    for output, command in ((tmp_path / "feats.faiss", ["index", str(tmp_path / "feats.npy")]),
                            (tmp_path / "run", ["train", "--data", str(image_folder), "--out", str(tmp_path / "run"),
                                                "--width", "0.0625", "--image-size", "16", "--batch-size", "2",
                                                "--max-steps", "1", "--workers", "0"])):
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline() == "held\n"
            refused = CliRunner().invoke(app, command)
            assert refused.exit_code == 1 and f"being written by process {holder.pid}" in refused.output, \
                refused.output
        finally:
            holder.kill()
            holder.wait()
    assert CliRunner().invoke(app, ["index", str(tmp_path / "feats.npy")]).exit_code == 0  # the dead one's lock
