"""File locks between processes (``filelock``) for what one process does to the shared
cache at a time: build an image, make a saved state, remove either."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from filelock import FileLock, Timeout

from .errors import ImageError

#: how long a process waits for another one's image build before giving up
BUILD_LOCK_TIMEOUT = 3600.0


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


def acquire_build_lock(lock: FileLock, waiting: str, say: Callable[[str], None]) -> None:
    """Take *lock*, the lock of a cached image's build; while another process holds it,
    *say* the *waiting* line first (a first build takes a minute or more).

    Raises:
        ImageError: the lock was not free after :data:`BUILD_LOCK_TIMEOUT`.
    """
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(waiting)
        try:
            lock.acquire(timeout=BUILD_LOCK_TIMEOUT)
        except Timeout:
            raise ImageError(
                f"gave up after {BUILD_LOCK_TIMEOUT:.0f} s waiting for the lock {lock.lock_file} "
                "(another process building the image): remove it if no build is running"
            ) from None
