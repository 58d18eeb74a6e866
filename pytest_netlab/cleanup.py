"""Removing what dead pytest-netlab runs left behind, and never what a live run owns.

Every resource names its owner as ``<pid>-<ticks>``, the owner's kernel start time (see
:mod:`pytest_netlab.owner`): runtime directories ``<owner>-*`` under the runtime base,
template build directories ``build-<owner>`` and partial states ``*.<owner>.part`` in
the template store, QEMU processes and lab daemons by ``NETLAB_OWNER=<owner>`` in their
environment, and each network namespace ``netlab-<pid>-...`` by its owner record
``owners/<namespace>`` in the runtime base. A resource is removed only when its owner is
gone: no process has that pid with that start time. A namespace without an owner
record was not made by this plugin (or not by this version) and is never removed. Files
about a lab (``labs/<namespace>.json``, ``kept/<namespace>.txt``) go with the owner of
their namespace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .constants import NAMESPACE_PREFIX, NETNS_RUN_DIR
from .owner import (
    Owner,
    kill_netns_processes,
    namespace_owner,
    owners_dir,
    process_owner,
)
from .untrusted import printable

log = logging.getLogger(__name__)

_NS_NAME = re.compile(rf"^{re.escape(NAMESPACE_PREFIX)}(?P<pid>\d+)-\S+$")
_RUNTIME_NAME = re.compile(r"^(?P<owner>\d+-\d+)-")
_BUILD_NAME = re.compile(r"^build-(?P<owner>\d+-\d+)$")
_PART_NAME = re.compile(r"^.+\.(?P<owner>\d+-\d+)\.part$")


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


def _gone(owner: Owner | None) -> bool:
    """Whether *owner* is known and gone (this process is alive, a reuse of its pid not)."""
    return owner is not None and not owner.alive()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _orphaned_processes() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _gone(process_owner(int(entry.name))):
            yield int(entry.name)


def _lab_file_owner_gone(runtime_base: Path, name: str) -> bool:
    """Whether the owner of namespace *name* (whose files these are) is gone: by its
    record, else (the namespace went first) by the pid in its name."""
    match = _NS_NAME.match(name)
    if not match or int(match["pid"]) == os.getpid():
        return False
    owner = namespace_owner(runtime_base, name)
    if owner is not None:
        return _gone(owner)
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _remove_namespace(name: str) -> None:
    from pyroute2 import netns  # only now: a run without leftovers needs none

    killed = kill_netns_processes(NETNS_RUN_DIR / name)
    if killed:
        log.info("cleanup: killed %d process(es) in namespace %s", len(killed), name)
    try:
        netns.remove(name)
    except OSError as exc:
        log.warning("cannot remove namespace %s: %s", name, exc)


def _namespaces(runtime_base: Path | None, report: CleanupReport, dry_run: bool) -> None:
    names = sorted(os.listdir(NETNS_RUN_DIR)) if NETNS_RUN_DIR.is_dir() else []
    for name in names:
        if not _NS_NAME.match(name):
            continue
        owner = namespace_owner(runtime_base, name) if runtime_base is not None else None
        if owner is None:
            log.debug("cleanup: namespace %s has no owner record: not ours, left alone", name)
            continue
        if _gone(owner):
            report.namespaces.append(name)
            if not dry_run:
                _remove_namespace(name)
    if runtime_base is None or not owners_dir(runtime_base).is_dir():
        return
    for record in owners_dir(runtime_base).iterdir():
        if not (NETNS_RUN_DIR / record.name).exists() and _gone(namespace_owner(runtime_base, record.name)):
            report.files.append(str(record))
            if not dry_run:
                record.unlink(missing_ok=True)


def _runtime_files(runtime_base: Path, report: CleanupReport, dry_run: bool) -> None:
    for directory in runtime_base.iterdir():
        match = _RUNTIME_NAME.match(directory.name)
        if match and directory.is_dir() and _gone(Owner.parse(match["owner"])):
            report.directories.append(str(directory))
            if not dry_run:
                shutil.rmtree(directory, ignore_errors=True)
    # state of detached labs (labs/<lab>.json) and texts of kept labs (kept/<lab>.txt)
    for subdirectory in ("labs", "kept"):
        for path in sorted((runtime_base / subdirectory).glob("*.*")):
            if _lab_file_owner_gone(runtime_base, path.name.split(".")[0]):
                report.files.append(str(path))
                if not dry_run:
                    path.unlink(missing_ok=True)


def _template_files(template_dir: Path, report: CleanupReport, dry_run: bool) -> None:
    """Build directories and partial saved states of template makers that died."""
    for path in template_dir.iterdir():
        build, part = _BUILD_NAME.match(path.name), _PART_NAME.match(path.name)
        if build and path.is_dir() and not path.is_symlink() and _gone(Owner.parse(build["owner"])):
            report.directories.append(str(path))
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
        elif part and _gone(Owner.parse(part["owner"])):
            report.files.append(str(path))
            if not dry_run:
                path.unlink(missing_ok=True)


def remove_leftovers(
    runtime_base: Path | None = None, *, template_dir: Path | None = None, dry_run: bool = False,
) -> CleanupReport:
    """Kill processes, remove namespaces, runtime directories and template build files
    of dead owners.

    Never raises for a single resource that cannot be removed: it is logged and the
    rest is cleaned. Resources of this process and of live owners are left alone.
    """
    report = CleanupReport()
    for pid in _orphaned_processes():
        # a command line is anyone's text: escaped before it reaches a terminal
        report.processes.append(f"{pid} ({printable(_cmdline(pid)[:80])})")
        if not dry_run:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if runtime_base is not None and runtime_base.is_dir():
        _runtime_files(runtime_base, report, dry_run)  # before the owner records go
    _namespaces(runtime_base, report, dry_run)
    if template_dir is not None and template_dir.is_dir():
        _template_files(template_dir, report, dry_run)
    for line in report.lines():
        log.info("cleanup: %s", line)
    return report
