"""The guest budget's records on disk, in a directory every user of the machine may share:
where they are, the lock, and reading and writing them so that another user's files can
neither break a run nor make it believe nonsense.

- **Where.** ``/var/lib/pytest-netlab/budget``, made by ``setup.sh`` (owned by root, mode
  1777 like /tmp), when it is there and trusted: root's runs and every user's then share one
  budget. Else the runtime dir's ``budget/``: a budget of this user's runs only.
- **The lock.** flock on the directory itself, which only root controls: a lock file that a
  user made in a shared directory could be chmod'ed by that user to lock the others out.
- **Records.** Each is written to a new file (``O_EXCL|O_NOFOLLOW``, owned by its writer)
  renamed over the old one. They are read without following links, only regular files of
  one link and at most 4 KiB, and must hold sane numbers and name a live process of the
  user who owns the file; anything else is ignored (and said once).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .constants import GUEST_MEMORY_RANGE
from .errors import LabError
from .trust import shared_directory_problem

#: made by setup.sh; used by every run, root or not, when it is there and trusted
SHARED_BUDGET_DIR = Path("/var/lib/pytest-netlab/budget")
QEMU_OVERHEAD_MIB = 40  # measured: a resumed 128 MiB TCG guest's QEMU has an RSS of ~161 MiB
MAX_GUESTS = 1024  # in one record: more than any lab could boot
RECORD_MAX_BYTES = 4096
LOCK_POLL_SECONDS = 0.02
LOCK_REPORT_SECONDS = 10.0  # waiting this long for the lock is said (someone holds it)
LOCK_TIMEOUT = 300.0
_TEMPORARY = re.compile(r"\.(?P<pid>\d+)-.*\.tmp")


def guest_cost(memory_mib: int) -> int:
    """What one guest of *memory_mib* takes from the budget: its RAM and QEMU's own."""
    return memory_mib + QEMU_OVERHEAD_MIB


@dataclass(frozen=True)
class Holding:
    """One lab's record: what it holds, or since when it waits (wall clock)."""

    lab: str
    pid: int
    started: str
    guests: int = 0
    memory: int = 0
    booting: int = 0
    waiting_since: float | None = None

    @property
    def name(self) -> str:
        """Its file's name; the pid keeps labs of the same name in two processes apart."""
        return f"{self.pid}-{self.lab}.json"


@dataclass(frozen=True)
class Place:
    """Where a process's budget records are, and whether every user's runs share them."""

    directory: Path
    shared: bool
    why: str = ""  # why the shared directory is not used

    def describe(self) -> str:
        if self.shared:
            return f"machine-wide: records in {self.directory}, shared by root's and every user's runs"
        return (f"per user: records in {self.directory}, so other users' runs have budgets of their "
                f"own ({self.why})")


def budget_place(runtime_base: Path, shared: Path | None = None) -> Place:
    """The *shared* directory (:data:`SHARED_BUDGET_DIR`) if it is there and trusted, else
    the runtime dir's ``budget/``."""
    shared = shared or SHARED_BUDGET_DIR
    problem = shared_directory_problem(shared)
    return Place(shared, True) if problem is None else Place(runtime_base / "budget", False, problem)


def _whole(value: object, what: str, top: int, bottom: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not bottom <= value <= top:
        raise ValueError(f"{what} is not a whole number from {bottom} to {top}")
    return value


def parse_holding(data: object) -> Holding:
    """A record's JSON as a :class:`Holding`.

    Raises:
        ValueError: not exactly the fields of one, or a value out of its range.
    """
    names = {field.name for field in fields(Holding)}
    if not isinstance(data, dict) or set(data) != names:
        raise ValueError(f"not an object of the fields {', '.join(sorted(names))}")
    lab, started, since = data["lab"], data["started"], data["waiting_since"]
    if not (isinstance(lab, str) and 0 < len(lab) <= 128 and lab.isprintable() and "/" not in lab):
        raise ValueError("lab is not a printable name of at most 128 characters")
    if not (isinstance(started, str) and len(started) <= 32 and started.isprintable()):
        raise ValueError("started is not a printable string of at most 32 characters")
    if since is not None and not (
        isinstance(since, (int, float)) and not isinstance(since, bool) and 0 <= since < math.inf
    ):
        raise ValueError("waiting_since is neither null nor a time")
    guests = _whole(data["guests"], "guests", MAX_GUESTS)
    return Holding(
        lab, _whole(data["pid"], "pid", 1 << 22, bottom=1), started, guests,
        _whole(data["memory"], "memory", guests * guest_cost(GUEST_MEMORY_RANGE[1])),
        _whole(data["booting"], "booting", guests), None if since is None else float(since),
    )


def load_record(path: Path) -> tuple[Holding, int]:
    """The record at *path*, and the uid that owns its file.

    Raises:
        ValueError: not a record (what is wrong; never the file's content).
        OSError: it cannot be read (a symlink, gone, not readable).
    """
    before = path.lstat()
    if not stat.S_ISREG(before.st_mode) or before.st_nlink != 1:
        raise ValueError("not a regular file of one link")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
            raise ValueError("replaced while it was opened")
        data = handle.read(RECORD_MAX_BYTES + 1)
    if len(data) > RECORD_MAX_BYTES:
        raise ValueError(f"larger than {RECORD_MAX_BYTES} bytes")
    try:
        holding = parse_holding(json.loads(data))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if path.name != holding.name:
        raise ValueError(f"its name is not {holding.name!r}, as its content says")
    return holding, info.st_uid


def write_record(directory: Path, holding: Holding) -> None:
    """Write *holding*'s record: a new file of ours, readable by all, renamed over the last.

    Raises:
        LabError: another user's file is in the way (only root may remove it).
    """
    path = directory / holding.name
    temporary = directory / f".{holding.pid}-{holding.lab}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)  # whatever the umask: every user's runs read it
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(asdict(holding)))
        os.rename(temporary, path)
    except PermissionError:
        temporary.unlink(missing_ok=True)
        raise LabError(
            f"cannot write the guest budget's record {path}: a file of uid {_owner(path)} is in its "
            "place (the directory is sticky: only its owner or root may remove it)"
        ) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _owner(path: Path) -> str:
    try:
        return str(path.lstat().st_uid)
    except OSError:
        return "?"


def remove(path: Path) -> None:
    """Remove *path* if this user may (its own, or any as root); else leave it."""
    with suppress(FileNotFoundError, PermissionError):
        path.unlink()


def remove_leftovers(directory: Path, alive: Callable[[int], object]) -> None:
    """Remove the temporary files of writers that died between writing and renaming."""
    for path in directory.glob(".*.tmp"):
        match = _TEMPORARY.fullmatch(path.name)
        if match is None or alive(int(match["pid"])) is None:
            remove(path)


def lock_holders(path: Path) -> list[int]:
    """The processes holding a flock on *path* (``/proc/locks``)."""
    info = os.stat(path)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    with open("/proc/locks") as locks:
        return [int(f[4]) for f in map(str.split, locks) if len(f) > 5 and f[1] == "FLOCK" and f[5] == device]


@contextmanager
def locked(directory: Path, report: Callable[[str], None]) -> Iterator[None]:
    """Hold the flock of *directory* for the block.

    Raises:
        LabError: another process held it for :data:`LOCK_TIMEOUT` (named).
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _acquire(fd, directory, report)
        yield
    finally:
        os.close(fd)  # and with it the lock


def _acquire(fd: int, directory: Path, report: Callable[[str], None]) -> None:
    started = time.monotonic()
    reported = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waited = time.monotonic() - started
        if (waited >= LOCK_REPORT_SECONDS and not reported) or waited >= LOCK_TIMEOUT:
            holders = ", ".join(f"{pid} (uid {_process_uid(pid)})" for pid in lock_holders(directory))
            line = f"the guest budget's lock on {directory} is held by process {holders or '?'}"
            if waited >= LOCK_TIMEOUT:
                raise LabError(f"{line} for {waited:.0f} s: gave up waiting for it")
            report(f"netlab: waiting: {line}")
            reported = True
        time.sleep(LOCK_POLL_SECONDS)


def _process_uid(pid: int) -> str:
    uid = process_uid(pid)
    return "?" if uid is None else str(uid)


def process_uid(pid: int) -> int | None:
    """The user running process *pid*; ``None`` if it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
