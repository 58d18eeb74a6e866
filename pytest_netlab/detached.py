"""Labs left running by ``pytest-netlab up --detach``, and ``pytest-netlab down``.

A detached lab is owned by a background ``pytest-netlab up`` process (its namespace, QEMU
processes and runtime directory carry that process's pid, so :mod:`.cleanup` leaves
them alone while it lives). Its state file, ``<runtime base>/labs/<lab>.json``, says
which process that is; ``pytest-netlab down`` sends it SIGTERM and waits until it is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from .errors import ConfigError, LabError
from .owner import is_running, namespace_owner


def labs_dir(runtime_base: Path) -> Path:
    return runtime_base / "labs"


@dataclass(frozen=True)
class DetachedLab:
    """The state file of one detached lab."""

    name: str
    pid: int  # the background ``pytest-netlab up`` that owns the lab
    topology: str
    workdir: str
    access: str  # the text of how to reach it (pytest_netlab.access.describe)
    detached: bool = True  # False: a `pytest-netlab up` in the foreground (pytest-netlab list, ssh, exec)

    @staticmethod
    def path_of(runtime_base: Path, name: str) -> Path:
        return labs_dir(runtime_base) / f"{name}.json"

    def save(self, runtime_base: Path) -> Path:
        path = self.path_of(runtime_base, self.name)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n")
        temporary.replace(path)  # `pytest-netlab down` never reads half a file
        return path

    def owner_alive(self, runtime_base: Path) -> bool:
        """Whether the owner still runs (not a later process that got its pid): by the
        owner record of its namespace, else by its pid."""
        owner = namespace_owner(runtime_base, self.name)
        if owner is not None and owner.pid == self.pid:
            return owner.alive()
        return is_running(self.pid)


def detached_labs(runtime_base: Path) -> list[DetachedLab]:
    """Every detached lab with a state file, by name; unreadable files are skipped."""
    labs = []
    for path in sorted(labs_dir(runtime_base).glob("*.json")):
        try:
            labs.append(DetachedLab(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return labs


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_Lab = TypeVar("_Lab", bound=_Named)


def by_name(labs: Sequence[_Lab], name: str, kind: str) -> _Lab:
    """The lab called *name* among *labs*, which are the *kind* ("detached", "running") labs.

    Raises:
        ConfigError: there is none; the message names those there are.
    """
    for lab in labs:
        if lab.name == name:
            return lab
    existing = ", ".join(lab.name for lab in labs) or "none"
    raise ConfigError(f"no {kind} lab {name!r}: {kind} labs are {existing}")


def find(runtime_base: Path, name: str) -> DetachedLab:
    """The detached lab called *name*.

    Raises:
        ConfigError: there is none; the message names those that exist.
    """
    return by_name(detached_labs(runtime_base), name, "detached")


def take_down(runtime_base: Path, lab: DetachedLab, timeout: float = 60.0) -> str:
    """Ask the owner of *lab* to tear it down (SIGTERM) and wait until it has exited;
    return what was done, as a sentence.

    Raises:
        LabError: the owner still runs after *timeout* seconds.
    """
    path = DetachedLab.path_of(runtime_base, lab.name)
    if not lab.owner_alive(runtime_base):
        # its owner died without tearing down: its resources are a dead run's leftovers
        from .cleanup import remove_leftovers

        remove_leftovers(runtime_base)
        path.unlink(missing_ok=True)
        return f"lab {lab.name}: its owner (pid {lab.pid}) was gone; removed its leftovers"
    with contextlib.suppress(ProcessLookupError):
        os.kill(lab.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_running(lab.pid):
        if time.monotonic() > deadline:
            raise LabError(
                f"lab {lab.name}: its owner (pid {lab.pid}) was sent SIGTERM and still runs "
                f"after {timeout:g} s; see {lab.workdir}/netlab-up.log"
            )
        time.sleep(0.05)
    path.unlink(missing_ok=True)  # the owner removes it; not if it was killed meanwhile
    return f"lab {lab.name} is down"

