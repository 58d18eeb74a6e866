"""Removing what dead pytest-netlab runs left behind, and never what a live run owns.

Every resource carries its owner's pid: namespaces are ``netlab-<pid>-<n>``, runtime
directories ``<pid>-*`` under the runtime base, files about a lab there
``labs/<namespace>.json`` (a detached lab's state) and ``kept/<namespace>.txt`` (a kept
lab's text), and QEMU processes and lab daemons have ``NETLAB_OWNER=<pid>`` in their
environment. An owner is dead when no process has its
pid, or when the process that has it now started after the resource was last changed
(the pid was reused: the real owner made or touched the resource while it lived).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .constants import NAMESPACE_PREFIX, NETNS_RUN_DIR
from .untrusted import printable

log = logging.getLogger(__name__)

OWNER_ENV = "NETLAB_OWNER"
_NS_NAME = re.compile(rf"^{re.escape(NAMESPACE_PREFIX)}(?P<pid>\d+)-\d+$")
_RUNTIME_NAME = re.compile(r"^(?P<pid>\d+)-")
# /proc start times count clock ticks; a resource made within this margin of its
# owner's start is still taken as the owner's (a pid is not reused that fast)
_START_MARGIN = 0.5


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> float | None:
    """When process *pid* started, in seconds since the epoch; ``None`` if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its end
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(fields[19])  # field 22 of the whole line: starttime
    # /proc counts from boot on CLOCK_BOOTTIME; /proc/stat's btime is whole seconds only
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def owner_alive(pid: int, resource_time: float | None = None) -> bool:
    """Whether the process that made a resource (last changed at *resource_time*,
    epoch seconds) is still running: pid *pid* exists and started before that time."""
    if not pid_alive(pid):
        return False
    if resource_time is None:
        return True
    started = process_start_time(pid)
    if started is None:
        return pid_alive(pid)  # not readable (another user): trust the pid
    return started <= resource_time + _START_MARGIN


def _changed_at(path: Path) -> float | None:
    # mtime, not ctime: it is when the owner last added or removed an entry (a directory)
    # or made the file (a namespace's mount point)
    try:
        return path.stat().st_mtime
    except OSError:
        return None


@dataclass
class CleanupReport:
    """What :func:`remove_leftovers` removed (or, in a dry run, would remove)."""

    namespaces: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.processes or self.directories or self.files)

    def lines(self) -> list[str]:
        return (
            [f"killed process {p}" for p in self.processes]
            + [f"removed namespace {n}" for n in self.namespaces]
            + [f"removed directory {d}" for d in self.directories]
            + [f"removed file {f}" for f in self.files]
        )


def _owner_of_process(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(OWNER_ENV.encode() + b"="):
            value = entry.split(b"=", 1)[1]
            return int(value) if value.isdigit() else None
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _orphaned_processes(me: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        owner = _owner_of_process(pid)
        if owner is None or owner == me:
            continue
        # a child starts after its owner: an "owner" that started later is a reused pid
        if not owner_alive(owner, process_start_time(pid)):
            found.append(pid)
    return found


def remove_leftovers(runtime_base: Path | None = None, *, dry_run: bool = False) -> CleanupReport:
    """Kill processes, remove namespaces and runtime directories of dead owners.

    Never raises for a single resource that cannot be removed: it is logged and the
    rest is cleaned. Resources of this process and of live owners are left alone.
    """
    report = CleanupReport()
    me = os.getpid()
    for pid in _orphaned_processes(me):
        # a command line is anyone's text: escaped before it reaches a terminal
        report.processes.append(f"{pid} ({printable(_cmdline(pid)[:80])})")
        if not dry_run:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    names = sorted(os.listdir(NETNS_RUN_DIR)) if NETNS_RUN_DIR.is_dir() else []
    for name in names:
        match = _NS_NAME.match(name)
        if not match or int(match["pid"]) == me:
            continue
        if not owner_alive(int(match["pid"]), _changed_at(NETNS_RUN_DIR / name)):
            report.namespaces.append(name)
            if not dry_run:
                from pyroute2 import netns  # only now: a run without leftovers needs none

                try:
                    netns.remove(name)
                except OSError as exc:
                    log.warning("cannot remove namespace %s: %s", name, exc)
    if runtime_base is not None and runtime_base.is_dir():
        for directory in runtime_base.iterdir():
            match = _RUNTIME_NAME.match(directory.name)
            if not match or int(match["pid"]) == me:
                continue
            if not owner_alive(int(match["pid"]), _changed_at(directory)):
                report.directories.append(str(directory))
                if not dry_run:
                    shutil.rmtree(directory, ignore_errors=True)
        # state of detached labs (labs/<lab>.json) and texts of kept labs (kept/<lab>.txt)
        for subdirectory in ("labs", "kept"):
            for path in sorted((runtime_base / subdirectory).glob("*.*")):
                match = _NS_NAME.match(path.name.split(".")[0])
                if not match or int(match["pid"]) == me:
                    continue
                if not owner_alive(int(match["pid"]), _changed_at(path)):
                    report.files.append(str(path))
                    if not dry_run:
                        path.unlink(missing_ok=True)
    for line in report.lines():
        log.info("cleanup: %s", line)
    return report
