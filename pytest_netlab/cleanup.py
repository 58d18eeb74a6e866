"""Removing what dead pytest-netlab runs left behind, and never what a live run owns.

Every resource carries its owner's pid: namespaces are ``netlab-<pid>-<n>``, runtime
directories ``<pid>-*`` under the runtime base, and QEMU processes and lab daemons have
``NETLAB_OWNER=<pid>`` in their environment. An owner is dead when no process has its
pid (or when that pid now belongs to a process started after the resource was made).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import netns

from .lab import NAMESPACE_PREFIX

log = logging.getLogger(__name__)

OWNER_ENV = "NETLAB_OWNER"
_NS_NAME = re.compile(rf"^{re.escape(NAMESPACE_PREFIX)}(?P<pid>\d+)-\d+$")
_RUNTIME_NAME = re.compile(r"^(?P<pid>\d+)-")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class CleanupReport:
    namespaces: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.processes or self.directories)

    def lines(self) -> list[str]:
        return (
            [f"killed process {p}" for p in self.processes]
            + [f"removed namespace {n}" for n in self.namespaces]
            + [f"removed directory {d}" for d in self.directories]
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


def remove_leftovers(runtime_base: Path | None = None, *, dry_run: bool = False) -> CleanupReport:
    """Kill processes, remove namespaces and runtime directories of dead owners."""
    report = CleanupReport()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        owner = _owner_of_process(int(entry.name))
        if owner is not None and owner != me and not pid_alive(owner):
            report.processes.append(f"{entry.name} ({_cmdline(int(entry.name))[:80]})")
            if not dry_run:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
    for name in netns.listnetns():
        match = _NS_NAME.match(name)
        if match and not pid_alive(int(match["pid"])):
            report.namespaces.append(name)
            if not dry_run:
                try:
                    netns.remove(name)
                except OSError as exc:
                    log.warning("cannot remove namespace %s: %s", name, exc)
    if runtime_base is not None and runtime_base.is_dir():
        for directory in runtime_base.iterdir():
            match = _RUNTIME_NAME.match(directory.name)
            if match and not pid_alive(int(match["pid"])):
                report.directories.append(str(directory))
                if not dry_run:
                    shutil.rmtree(directory, ignore_errors=True)
    for line in report.lines():
        log.info("cleanup: %s", line)
    return report
