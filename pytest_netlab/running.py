"""The labs running on this machine, as ``pytest-netlab list``, ``ssh``, ``exec`` and ``capture``
find them: every lab namespace whose owner lives, told apart by the files about it in the
runtime base (``labs/<lab>.json``: ``pytest-netlab up``, detached or not; ``kept/<lab>.json``: a
test's lab held open), which also give its directory (with its ``ssh_config``).
"""

from __future__ import annotations

import json
import os
import pwd
from dataclasses import asdict, dataclass
from pathlib import Path

from .access import SSH_CONFIG
from .cleanup import _NS_NAME
from .detached import by_name, detached_labs
from .errors import ConfigError
from .keep import kept_dir
from .owner import command_line, namespace_owner, owners_dir


@dataclass(frozen=True)
class RunningLab:
    """One live lab: its namespace, what kind of run owns it, and who."""

    name: str
    kind: str  # "detached" or "up" (pytest-netlab up), "kept" (a test's, held open), "test"
    owner: int  # the pid of the process that owns it
    user: str
    command: str  # the owner's command line
    workdir: str | None  # unknown for a test's lab that is not kept

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def ssh_config(self) -> Path:
        """The lab's OpenSSH client configuration.

        Raises:
            ConfigError: the lab has none (a test's lab while its test runs).
        """
        if self.workdir is None or not (path := Path(self.workdir) / SSH_CONFIG).exists():
            raise ConfigError(
                f"lab {self.name} ({self.kind}) has no {SSH_CONFIG}: labs of pytest-netlab up and labs "
                "kept with --netlab-keep-on-fail or --netlab-pause have one"
            )
        return path

    def guests(self) -> list[str]:
        """The guests its ``ssh_config`` reaches by name."""
        names = []
        for line in self.ssh_config.read_text().splitlines():
            words = line.split()
            if len(words) == 2 and words[0] == "Host" and words[1] != "*":
                names.append(words[1])
        return names

    def check_guest(self, guest: str) -> str:
        """*guest*, if SSH reaches it by that name.

        Raises:
            ConfigError: it does not; the message names those it does.
        """
        guests = self.guests()
        if guest not in guests:
            raise ConfigError(
                f"lab {self.name} has no guest {guest!r} reachable by SSH: "
                f"guests are {', '.join(guests) or 'none'}"
            )
        return guest


def _owner_user(pid: int) -> str:
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return "?"


def kept_workdirs(runtime_base: Path) -> dict[str, str]:
    """The directories of the labs held open, by lab name (from ``kept/<lab>.json``)."""
    found = {}
    for path in kept_dir(runtime_base).glob("*.json"):
        try:
            record = json.loads(path.read_text())
            found[str(record["name"])] = str(record["workdir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def running_labs(runtime_base: Path) -> list[RunningLab]:
    """Every lab on this machine whose owner lives, by name."""
    started = {
        lab.name: lab for lab in detached_labs(runtime_base) if lab.owner_alive(runtime_base)
    }
    kept = kept_workdirs(runtime_base)
    labs = []
    # every namespace the plugin makes, bound under /run/netns (as root) or held by a
    # process (rootless), has an owner record: a namespace without one is not ours
    names = sorted(os.listdir(owners_dir(runtime_base))) if owners_dir(runtime_base).is_dir() else []
    for name in names:
        match = _NS_NAME.match(name)
        if not match:
            continue
        owner = namespace_owner(runtime_base, name)
        if owner is None or not owner.alive():
            continue  # not ours, or a dead run's leftover: pytest-netlab cleanup removes it
        pid = owner.pid
        workdir: str | None = None
        if name in started:
            kind, workdir = ("detached" if started[name].detached else "up"), started[name].workdir
        elif name in kept:
            kind, workdir = "kept", kept[name]
        else:
            kind = "test"
        labs.append(RunningLab(name, kind, pid, _owner_user(pid), command_line(pid), workdir))
    return labs


def find_running(runtime_base: Path, name: str) -> RunningLab:
    """The live lab called *name*.

    Raises:
        ConfigError: there is none; the message names those that run.
    """
    return by_name(running_labs(runtime_base), name, "running")


def table(labs: list[RunningLab]) -> str:
    """``pytest-netlab list``'s text: a line per lab."""
    if not labs:
        return "no labs are running\n"
    rows = [("LAB", "KIND", "OWNER", "DIRECTORY")] + [
        (lab.name, lab.kind, f"{lab.user} pid {lab.owner}: {_short(lab.command)}", lab.workdir or "-")
        for lab in labs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + f"  {row[3]}\n"
        for row in rows
    )


def _short(command: str, limit: int = 60) -> str:
    # the programs without their directories: "python3 pytest -n 2 tests/..."
    words = [w.rsplit("/", 1)[-1] if i < 2 and w.startswith("/") else w
             for i, w in enumerate(command.split(" "))]
    text = " ".join(words)
    return text if len(text) <= limit else text[: limit - 3] + "..."
