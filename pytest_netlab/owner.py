"""Who owns a resource: a process, named by its pid and its start time in kernel ticks.

A pid alone is reused; a start time rebuilt from the wall clock moves when the clock is
set. The kernel's start time of a process (``/proc/PID/stat`` field 22, clock ticks since
boot) changes with neither, so an owner is ``<pid>-<ticks>`` everywhere: in the names of
runtime and build directories and partial files, in the ``NETLAB_OWNER`` environment of
child processes, and in an owner record beside each network namespace. The owner is
alive while a process with that pid has that start time.

Children are started under ``setpriv --pdeathsig KILL`` (util-linux): the kernel kills
them when the thread that started them ends, without a ``preexec_fn`` (which can
deadlock a child forked from a process with threads).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

OWNER_ENV = "NETLAB_OWNER"
_TAG = re.compile(r"(?P<pid>\d+)-(?P<ticks>\d+)")


def start_ticks(pid: int) -> int | None:
    """When process *pid* started, in clock ticks since boot; ``None`` if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its end
    return int(stat[stat.rindex(")") + 2:].split()[19])


@dataclass(frozen=True)
class Owner:
    """A process that owns resources: its pid and kernel start time."""

    pid: int
    ticks: int

    @classmethod
    def me(cls) -> Owner:
        ticks = start_ticks(os.getpid())
        assert ticks is not None  # this process runs
        return cls(os.getpid(), ticks)

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner in ``<pid>-<ticks>``; ``None`` for anything else."""
        match = _TAG.fullmatch(text.strip())
        return cls(int(match["pid"]), int(match["ticks"])) if match else None

    @property
    def tag(self) -> str:
        return f"{self.pid}-{self.ticks}"

    def alive(self) -> bool:
        """Whether this very process still runs (not a later one with its pid)."""
        return start_ticks(self.pid) == self.ticks


def owner_environment() -> dict[str, str]:
    """The environment of child processes, marked with their owner."""
    return {**os.environ, OWNER_ENV: Owner.me().tag}


def process_owner(pid: int) -> Owner | None:
    """The owner in process *pid*'s environment; ``None`` if it has none (or is gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(OWNER_ENV.encode() + b"="):
            return Owner.parse(entry.split(b"=", 1)[1].decode(errors="replace"))
    return None


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """*argv* run so that the kernel kills it when the thread that starts it ends.

    The death signal is not inherited by what the command forks: those are found by
    their owner environment, or by their network namespace (:func:`pids_in_netns`).
    """
    return ["setpriv", "--pdeathsig", "KILL", "--", *argv]


def pids_in_netns(path: Path) -> list[int]:
    """The processes whose network namespace is the one bound at *path*."""
    try:
        target = path.stat()
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            ns = (entry / "ns" / "net").stat()
        except OSError:
            continue
        if (ns.st_ino, ns.st_dev) == (target.st_ino, target.st_dev):
            found.append(int(entry.name))
    return found


def kill_netns_processes(path: Path, rounds: int = 10) -> list[int]:
    """SIGKILL every process in the network namespace at *path*, again while one forks
    new ones (a few rounds); return their pids."""
    killed: list[int] = []
    for _ in range(rounds):
        pids = pids_in_netns(path)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed += [pid for pid in pids if pid not in killed]
    return killed


def owners_dir(runtime_base: Path) -> Path:
    """Where the owner record of each network namespace is: ``owners/<namespace>``."""
    return runtime_base / "owners"


def namespace_owner(runtime_base: Path, name: str) -> Owner | None:
    """The owner recorded for namespace *name*; ``None`` without a (readable) record."""
    try:
        return Owner.parse((owners_dir(runtime_base) / name).read_text())
    except OSError:
        return None
