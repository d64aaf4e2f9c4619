"""Durable file writes: a 2xx from the service means the bytes are on disk.

A file is written under a hidden temporary name, flushed and fsynced, renamed into place
(atomic on POSIX) and its directory fsynced, so a reader (the spool worker, the streaming
job's landing source) sees it whole or not at all, and a crash after the rename keeps it.
"""

from __future__ import annotations

import itertools
import os
import time

_SEQ = itertools.count()


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(directory: str, name: str, data: bytes) -> str:
    """Write ``data`` to ``directory/name`` durably and atomically; the final path."""
    tmp = os.path.join(directory, f".{name}.tmp")  # hidden: readers skip dot-files and .tmp
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    final = os.path.join(directory, name)
    os.replace(tmp, final)
    fsync_dir(directory)
    return final


def unique_stem(prefix: str) -> str:
    """A file stem that sorts by creation time within a process and is unique across processes."""
    return f"{prefix}-{time.time_ns():020d}-{os.getpid()}-{next(_SEQ):08d}"
