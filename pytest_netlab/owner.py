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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .privileges import QemuIdentity

OWNER_ENV = "NETLAB_OWNER"
#: an owner tag, ``<pid>-<ticks>``, as it appears in the names of what it owns
TAG_PATTERN = r"\d+-\d+"
_TAG = re.compile(r"(?P<pid>\d+)-(?P<ticks>\d+)")


def process_stat(pid: int) -> tuple[str, int] | None:
    """Process *pid*'s state letter (``R``, ``S``, ``Z``...) and start time in clock
    ticks since boot, from ``/proc/PID/stat``; ``None`` if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its end
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def start_ticks(pid: int) -> int | None:
    """When process *pid* started, in clock ticks since boot; ``None`` if it is gone."""
    stat = process_stat(pid)
    return stat[1] if stat else None


def is_running(pid: int) -> bool:
    """Whether *pid* exists and has not exited (a zombie, not yet reaped, has)."""
    stat = process_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


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


def command_line(pid: int) -> str:
    """Process *pid*'s command line, its words joined by spaces; ``"?"`` if it is gone.
    Anyone's text: escape it (:func:`pytest_netlab.untrusted.printable`) before showing it."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    return " ".join(w.decode(errors="replace") for w in words)


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


def die_with_parent(argv: Sequence[str], identity: QemuIdentity | None = None) -> list[str]:
    """*argv* run so that the kernel kills it when the thread that starts it ends; as
    *identity*, without privileges, if given (see :mod:`pytest_netlab.privileges`).

    The death signal is not inherited by what the command forks: those are found by
    their owner environment, or by their network namespace (:func:`pids_in_netns`).
    setpriv sets it after changing the user (a change of user clears it), so it holds
    for an unprivileged child too.
    """
    drop = identity.setpriv_args() if identity is not None else []
    return ["setpriv", "--pdeathsig", "KILL", *drop, "--", *argv]


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


def kill_netns_processes(path: Path, rounds: int = 10, spare: int | None = None) -> list[int]:
    """SIGKILL every process in the network namespace at *path* but *spare* (a rootless
    lab's holder, which ends by itself), again while one forks new ones (a few rounds);
    return their pids."""
    killed: list[int] = []
    for _ in range(rounds):
        pids = [pid for pid in pids_in_netns(path) if pid != spare]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed += [pid for pid in pids if pid not in killed]
    return killed


def owners_dir(runtime_base: Path) -> Path:
    """Where the owner record of each network namespace is: ``owners/<namespace>``.

    A record's first line is the owner's tag; a rootless lab's record has a second line,
    ``holder <tag>``: the process holding its namespaces (:mod:`pytest_netlab.nsholder`).
    """
    return runtime_base / "owners"


def _record_lines(runtime_base: Path, name: str) -> list[str]:
    try:
        return (owners_dir(runtime_base) / name).read_text().splitlines()
    except OSError:
        return []


def namespace_owner(runtime_base: Path, name: str) -> Owner | None:
    """The owner recorded for namespace *name*; ``None`` without a (readable) record."""
    lines = _record_lines(runtime_base, name)
    return Owner.parse(lines[0]) if lines else None


def namespace_holder(runtime_base: Path, name: str) -> Owner | None:
    """The process holding rootless lab *name*'s namespaces, as recorded; ``None`` for a
    lab made as root (its namespace is bound under /run/netns) or without a record."""
    for line in _record_lines(runtime_base, name)[1:]:
        word, _, tag = line.partition(" ")
        if word == "holder":
            return Owner.parse(tag)
    return None


def sigterm_like_ctrl_c(owner: int) -> Callable[[int, object], None]:
    """A SIGTERM handler for process *owner* that tears its labs down as Ctrl-C does
    (``KeyboardInterrupt``). A forked copy of it (pyroute2 forks) must not run the
    teardown of labs that are not its own: it dies as by default."""

    def on_sigterm(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    return on_sigterm
