"""File locks between processes (``filelock``) for what one process does to the shared
cache at a time: build an image, make a saved state, remove either."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock, Timeout


@contextmanager
def unless_locked(lock: FileLock) -> Iterator[bool]:
    """Hold *lock* for the block if no one else holds it; yield whether it is held.

    For removals: what another process holds the lock of (a build, a save) is in use
    and left alone::

        with unless_locked(FileLock(path + ".lock")) as held:
            if held:
                remove(path)
    """
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
