"""Holding a lab open for a person to look at before it is torn down.

The text of how to reach it is written to a file under ``<runtime base>/kept/`` (so it
can be found from another shell), beside a record of the lab's directory (``<lab>.json``,
which ``pytest-netlab list``, ``ssh`` and ``exec`` read); the hold ends when Enter is pressed on the
controlling terminal, when one of those files is deleted, or when the timeout runs out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_KEEP_TIMEOUT = 300.0
_POLL = 0.2  # seconds between looks at the file (and the terminal)


def kept_dir(runtime_base: Path) -> Path:
    return runtime_base / "kept"


def open_terminal() -> int | None:
    """A file descriptor of the controlling terminal (``/dev/tty``), or ``None`` without
    one (CI, a daemon, an xdist worker's session)."""
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None


@dataclass
class Hold:
    """Labs held open. :attr:`text` (how to reach them, how to go on) is in one file
    per lab, :attr:`paths`, until :meth:`wait` returns."""

    paths: list[Path]
    text: str
    timeout: float
    records: list[Path] = field(default_factory=list)  # <lab>.json: name and directory

    @classmethod
    def write(
        cls, directory: Path, lab_names: list[str], body: str, timeout: float, *, terminal: bool,
        workdirs: Sequence[Path] = (),
    ) -> Hold:
        """Write *body* and how the hold ends to ``<lab>.txt`` in *directory* for each lab,
        and its directory (from *workdirs*, in the order of *lab_names*) to ``<lab>.json``."""
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        paths = [directory / f"{name}.txt" for name in lab_names]
        enter = "press Enter here, " if terminal else ""
        text = body + (
            f"the run goes on (and tears the lab down) when you {enter}delete "
            f"{' or '.join(map(str, paths))}, or after {timeout:g} s\n"
        )
        records = []
        for name, workdir in zip(lab_names, workdirs, strict=False):
            record = directory / f"{name}.json"
            record.write_text(json.dumps({"name": name, "pid": os.getpid(), "workdir": str(workdir)}) + "\n")
            records.append(record)
        for path in paths:
            path.write_text(text)
        return cls(paths, text, timeout, records)

    def wait(self, terminal_fd: int | None) -> str:
        """Block until a line is entered on *terminal_fd*, a file is deleted, or the
        timeout; return which ("enter", "file removed" or "timeout"). Removes the files."""
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return "timeout"
                if not all(path.exists() for path in self.paths):
                    return "file removed"
                if terminal_fd is None:
                    time.sleep(min(_POLL, left))
                    continue
                ready, _, _ = select.select([terminal_fd], [], [], min(_POLL, left))
                # a line in canonical mode, or the terminal closed (hung up): go on
                if ready and (not (data := os.read(terminal_fd, 1024)) or b"\n" in data):
                    return "enter"
        finally:
            for path in self.paths + self.records:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
