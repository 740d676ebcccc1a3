"""Atomic file writes: the data goes to a temporary file, is flushed and fsynced, then renamed over the
target, so a crash or kill mid-write leaves the old file (or none), never a truncated one that looks whole.
Folders (a sharded checkpoint) are written under a temporary name too and swapped in whole."""

import glob
import os
import shutil
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
    fsync_folder(os.path.dirname(os.path.abspath(path)))  # make the rename itself durable


def fsync_folder(path):
    """Make the entries of folder path (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def aside_name(path):
    return f"{path}.old"


def swap_in_folder(tmp, path):
    """Put the finished folder tmp in place of the folder path: path is renamed aside, tmp renamed to path, and the
    old one removed. A kill between the two renames leaves only the aside copy, which restore_folder(path) puts back
    (and loaders use meanwhile): at every moment a complete folder is there under one of the two names."""
    fsync_folder(tmp)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path):
        os.replace(path, aside_name(path))
    os.replace(tmp, path)
    fsync_folder(parent)
    if os.path.exists(aside_name(path)):
        shutil.rmtree(aside_name(path))


def restore_folder(path):
    """Finish a swap_in_folder that was killed: its aside copy comes back if path is missing, else goes; stale
    temporary folders of killed writes are removed."""
    aside = aside_name(path)
    if os.path.isdir(aside):
        if os.path.exists(path):
            shutil.rmtree(aside)
        else:
            os.replace(aside, path)
    for stale in stale_temporaries(path):
        shutil.rmtree(stale) if os.path.isdir(stale) else os.remove(stale)
