"""Durable file writes: a file replaced whole or not at all, and still there after a crash or power loss."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_directory(path: Path) -> None:
    """Makes the directory's entries durable: files created, renamed or removed in it."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def durable_replacement(path: Path) -> Iterator[BinaryIO]:
    """A file to write the new contents of `path` into; when the block ends without an error it is
    fsync'd, renamed over `path` and the directory fsync'd. Readers see the old file or the new one.

    The temporary file is named for this process and thread, so concurrent writers of the same path
    do not write into each other's files; the last rename wins. It ends in ".tmp", which a crash can
    leave behind.
    """
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)


def write_durably(path: Path, data: bytes | memoryview) -> None:
    """Replaces `path` with `data` durably (see durable_replacement)."""
    with durable_replacement(path) as handle:
        handle.write(data)
