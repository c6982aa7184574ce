"""The collection's own image files, as the service hands them out: only inside the folders (or as the files) that
were embedded, through no symbolic link, and only while each is the file that was embedded (its size and
modification time as simclr-embed recorded them). A file that changed answers 409, never its bytes."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

from simclr.search.errors import QueryError

# Media types the file routes send: an image format's own, else a type no browser runs (a GIF that is also an HTML
# page is served as image/gif, never as text/html).
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff",
                               "image/x-portable-anymap"})
OPAQUE = "application/octet-stream"
_NO_LINK = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class OpenedFile:
    """An open collection file (read it, then close it) and what the service says about it."""

    file: object  # a binary file object, positioned at 0
    size: int
    mtime_ns: int
    media_type: str

    def chunks(self, block_size: int = 1 << 16) -> Iterator[bytes]:
        """The file's `size` bytes as opened (what Content-Length says, whatever is appended meanwhile), then the
        file is closed (for a streamed response)."""
        left = self.size
        with self.file:
            while left and (block := self.file.read(min(block_size, left))):
                left -= len(block)
                yield block


def open_collection_file(row: int, path: str, roots: Sequence[str], recorded: dict | None) -> OpenedFile:
    """Open row `row`'s file at `path` as described above; QueryError 404 when it is gone, 409 when it is not the
    file that was embedded (a link out of the collection, another file, a changed one)."""
    real = os.path.realpath(path)
    parent, names = _below_a_root(real, roots)
    if names is None:
        raise QueryError(f"row {row}: {path} leads out of the embedded folders (to {real}); not served", 409)
    try:
        descriptor = _open_without_links(parent, names)
    except FileNotFoundError:
        raise QueryError(f"row {row}: its file {path} is gone", 404) from None
    except OSError as error:  # ELOOP: a link was put in the way; ENOTDIR, EACCES, ...
        raise QueryError(f"row {row}: {path} cannot be opened without following a link or at all "
                         f"({error.strerror or error}); not served", 409) from None
    file = os.fdopen(descriptor, "rb")
    try:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise QueryError(f"row {row}: {path} is no longer a regular file; not served", 409)
        if recorded is not None and (status.st_size, status.st_mtime_ns) != (recorded.get("size"),
                                                                               recorded.get("mtime_ns")):
            raise QueryError(f"row {row}: {path} changed since it was embedded ({recorded.get('size'):,} bytes "
                             f"then, {status.st_size:,} now, or another modification time); re-embed it to serve "
                             "it", 409)
        return OpenedFile(file, status.st_size, status.st_mtime_ns, _media_type(file))
    except BaseException:
        file.close()
        raise


def _below_a_root(real: str, roots: Sequence[str]) -> tuple[str, list[str] | None]:
    """(the folder to start from, the names below it) for a resolved path inside a root; names None outside."""
    for root in roots:
        if real == root:  # a file named directly
            return os.path.dirname(root), [os.path.basename(root)]
        if real.startswith(root.rstrip(os.sep) + os.sep):
            return root, os.path.relpath(real, root).split(os.sep)
    return "", None


def _open_without_links(parent: str, names: list[str]) -> int:
    """A descriptor of parent/names..., opened one component at a time with O_NOFOLLOW: a link swapped in after
    the path was resolved fails with ELOOP instead of being followed. The file is opened non-blocking (a FIFO put
    in its place cannot hang the request)."""
    folder = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names[:-1]:
            inner = os.open(name, _NO_LINK | os.O_DIRECTORY, dir_fd=folder)
            os.close(folder)
            folder = inner
        descriptor = os.open(names[-1], _NO_LINK | os.O_NONBLOCK, dir_fd=folder)
    finally:
        os.close(folder)
    os.set_blocking(descriptor, True)
    return descriptor


def _media_type(file) -> str:
    """The media type of the image format Pillow reads in the file (its header only), else OPAQUE."""
    media_type = OPAQUE
    # whatever else the file is, it is only ever sent as an opaque download
    with contextlib.suppress(Exception), Image.open(file) as image:
        media_type = Image.MIME.get(image.format or "", OPAQUE)
    file.seek(0)
    return media_type if media_type in IMAGE_MEDIA_TYPES else OPAQUE
