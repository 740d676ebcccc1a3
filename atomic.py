"""Atomic file writes: the data goes to a temporary file, is flushed and fsynced, then renamed over the
target, so a crash or kill mid-write leaves the old file (or none), never a truncated one that looks whole."""

import glob
import os
from contextlib import contextmanager


def temporary_name(path):
    return f"{path}.tmp.{os.getpid()}"


def stale_temporaries(path):
    """Temporary files of earlier atomic writes to path that never finished (their process was killed)."""
    return sorted(p for p in glob.glob(glob.escape(path) + ".tmp.*") if p != temporary_name(path))


@contextmanager
def atomic_write(path, mode="wb"):
    """with atomic_write(path) as f: f.write(...)  -- path appears (or is replaced) only on success."""
    tmp = temporary_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
