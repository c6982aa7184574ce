"""Writing files all or nothing: a temporary file beside the target, renamed over it when complete."""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def default_mode(directory: bool = False) -> int:
    """The permissions a plain open()/mkdir() would give under the current umask (mkstemp/mkdtemp use 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path` (all or nothing)."""
    with replaced_together(path) as (file,):
        write(file)


@contextlib.contextmanager
def replaced_together(*paths: Path) -> Iterator[list[BinaryIO]]:
    """Binary files to write, one per path, as temporary files beside them. When the block ends, every file is
    synced and only then renamed over its path, one right after the other, the last path last; when the block or a
    sync fails (a full disk), the temporary files are removed and `paths` stay as they were.

    For a pair (data, the record that describes it) the last path is removed before the others are renamed: a crash
    between the renames can leave the record missing, never an old record beside new data."""
    paths = [Path(path) for path in paths]
    staged: list[tuple[Path, BinaryIO]] = []
    try:
        for path in paths:
            if path.is_dir():
                raise IsADirectoryError(f"{path}: is a folder (name a file to write)")
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_dead_temporaries(path)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
            staged.append((Path(temporary), os.fdopen(handle, "wb")))
            os.chmod(temporary, default_mode())
        yield [file for _, file in staged]
        for _, file in staged:
            file.flush()
            os.fsync(file.fileno())
            file.close()
        if len(paths) > 1:
            paths[-1].unlink(missing_ok=True)
        for (temporary, _), path in zip(staged, paths, strict=True):
            os.replace(temporary, path)
        for folder in {path.parent for path in paths}:  # the renames themselves survive a power loss
            _sync_folder(folder)
    except BaseException:
        for temporary, file in staged:
            with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
                file.close()
            temporary.unlink(missing_ok=True)
        raise


def _temporary_prefix(path: Path, pid: int | None = None) -> str:
    """.NAME.HOST.PID- : whose temporary file it is, so that one left by a killed writer can be told apart."""
    return f".{path.name}.{socket.gethostname()}.{os.getpid() if pid is None else pid}-"


def _remove_dead_temporaries(path: Path) -> None:
    """Remove the temporary files of `path` that writers on this machine, killed before they could (SIGKILL, OOM,
    a power loss), left beside it: each may be a whole copy of the output. A live writer's, or another machine's
    (a shared folder), are left alone."""
    mine = f".{path.name}.{socket.gethostname()}."
    for temporary in path.parent.glob(f"{glob.escape(mine)}*-*.tmp"):
        pid = temporary.name[len(mine):].split("-", 1)[0]
        with contextlib.suppress(OSError):
            if pid.isdigit() and temporary.lstat().st_uid == os.getuid() and not _alive(int(pid)):
                temporary.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _sync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda file: file.write(text.encode()))


class PlantedLinkError(ValueError):
    """A symbolic link where simclr writes a file of its own (a partial or working file): never written through."""


def _refuse_link(path: Path) -> None:
    if os.path.islink(path):
        raise PlantedLinkError(f"{path}: a symbolic link where simclr writes its own file (to {os.readlink(path)}); "
                               "nothing is written through a link: remove it")


def create_own(path: Path) -> BinaryIO:
    """A new, empty file at `path` for writing (a stale one of an earlier run removed first), created with O_EXCL and
    O_NOFOLLOW so that a link planted in its place is never written through (PlantedLinkError names it)."""
    path = Path(path)
    _refuse_link(path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             default_mode())
    except FileExistsError:  # planted between the unlink and the open
        _refuse_link(path)
        raise
    return os.fdopen(descriptor, "wb")


def open_own(path: Path, mode: str) -> BinaryIO:
    """Open a file simclr wrote earlier ("rb", "ab" or "r+b"), never through a link (PlantedLinkError names it)."""
    flags = {"rb": os.O_RDONLY, "ab": os.O_WRONLY | os.O_APPEND, "r+b": os.O_RDWR}[mode]
    try:
        descriptor = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        _refuse_link(Path(path))  # ELOOP: a link in its place
        raise
    return os.fdopen(descriptor, mode)
